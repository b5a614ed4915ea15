"""A network run end to end: decoded rows, the grouped split, ``fit``, calibrated held-out figures,
the bundle. See ``train.rundir`` for the run directory and ``train.fit`` for what the epochs write."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle import Bundle, finish_bundle, load_bundle, write_json, writing_bundle
from leukoscope.bundle.network import save_weights
from leukoscope.data.manifest import Manifest, classes, skipped_files
from leukoscope.data.rare import RareReport
from leukoscope.models.networks import Network
from leukoscope.progress import SILENT, Progress
from leukoscope.train import rundir
from leukoscope.train.config import TrainConfig
from leukoscope.train.data import (
    Prepared,
    bundle_split,
    decoded_rows,
    describe,
    prepare_split,
    run_split,
    split_record,
)
from leukoscope.train.fit import fit
from leukoscope.train.forward import embeddings, predict_logits
from leukoscope.train.heldout import calibrated, operating_point
from leukoscope.train.outliers import run_outliers, write_record
from leukoscope.train.unfamiliar import (
    decoded_outliers,
    exposure,
    head_logits,
    mean_logits,
    network_embeddings,
    network_scorer,
    save_scorer,
    unfamiliar_config,
)


def train_network(m: Manifest, config: TrainConfig, out: Path, progress: Progress = SILENT) -> Bundle:
    """Train the network ``config.model`` on ``m`` into the run directory ``out``.

    A finished run directory is not retrained: rerunning returns its bundle; an unfinished one resumes.
    """
    outliers = run_outliers(config, m)
    out, cfg, done = rundir.begin(config, out, "network", m, outliers)
    if done is not None:
        return done
    rows = decoded_rows(m, cfg, progress)
    split = run_split(rows.taken, cfg, rows.rows, progress)
    images = rows.images[rows.rows["path"].isin(split["path"]).to_numpy()]  # a split file may leave rows out
    data, pre = prepare_split(split, images, rows.pre, cfg, classes(split))
    decoded, skipped = (None, []) if outliers is None else decoded_outliers(outliers, pre, cfg, progress)
    bundle, _ = fit_and_bundle(data, pre, cfg, out, progress, describe(rows.rows), rows.rare,
                               outliers=decoded)
    rundir.write_skipped(out, skipped_files(m) + rows.skipped + skipped)
    return bundle


def fit_and_bundle(data: Prepared, pre: dict[str, Any], cfg: TrainConfig, out: Path,
                   progress: Progress = SILENT, data_desc: str = "", rare: RareReport | None = None, *,
                   say_stretch: bool = True, outliers: tuple[Manifest, np.ndarray] | None = None
                   ) -> tuple[Bundle, dict[str, np.ndarray]]:
    """``fit``, evaluate, write metrics.json and ``out/bundle``; the loaded bundle and test probs.

    ``rare`` (the classes merged or dropped before the split) is recorded in both; ``say_stretch`` as in
    ``fit``; ``outliers`` (``decoded_outliers``: cells and pixels) make the score ``exposure``."""
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    model, history, extra = fit(data, pre, cfg, out, progress, say_stretch=say_stretch)
    metrics, temperature, probs = evaluate(model, data, pre, cfg.tta, progress)
    metrics |= split_record(data.split) | {"tta": cfg.tta,
                "best_epoch": extra["best_epoch"], "epochs_run": extra["epochs_run"],
                "epochs_planned": extra["epochs_planned"], "batch_size": extra["batch_size"],
                # this session only (a resumed run counts from the resume); the load average says
                # whether other work shared the machine
                "timing": {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                           "load_average": (load0 + os.getloadavg()[0]) / 2, "cores": os.cpu_count(),
                           "device": extra["device"]}}
    if "frozen_lr" in extra:
        metrics["frozen_lr"] = extra["frozen_lr"]
    config = {"family": "network", "model": cfg.model, "classes": data.classes,
              "input_size": pre["input_size"], "preprocessing": pre, "temperature": temperature,
              "tta": cfg.tta, "protocol": metrics["protocol"], "dedupe": metrics["dedupe"], "data": data_desc,
              "train": cfg.as_dict(), "trained_on": extra["device"]}
    op = operating_point(cfg.positive, cfg.target_sensitivity, probs,
                         {side: data.y[data.side(side)] for side in probs}, data.classes, metrics)
    if op is not None:
        config["operating_point"] = op
    train, train_emb, val_emb = network_embeddings(model, data, pre, cfg.tta, cfg.seed)
    if outliers is None:
        scorer = network_scorer(model, train_emb, data.y[train], val_emb, temperature, cfg.seed)
    else:
        cells, pixels = outliers
        emb, test_emb = (embeddings(model, x, pre, cfg.tta) for x in (pixels, data.images[data.side("test")]))
        scorer, metrics["outliers"] = exposure(
            train_emb, data.y[train], (val_emb, head_logits(model, val_emb)),
            (test_emb, head_logits(model, test_emb)), temperature, cells, (emb, head_logits(model, emb)),
            (str(cfg.outliers), cfg.outlier_class))
        write_record(out, cells)
    config |= unfamiliar_config(scorer) | mean_logits(model, train_emb)
    if cfg.class_map is not None:
        config["class_map"] = cfg.class_map
    if rare is not None and rare.types:
        metrics["rare_classes"] = config["rare_classes"] = rare.to_json()
    write_json(out / "metrics.json", metrics)
    with writing_bundle(out / rundir.BUNDLE) as folder:
        save_weights(model, folder)
        save_scorer(folder, scorer)
        finish_bundle(folder, config, metrics, bundle_split(data.split), history)
    rundir.mark_done(out)
    return load_bundle(out / rundir.BUNDLE), probs


def evaluate(model: Network, data: Prepared, pre: dict[str, Any], tta: bool,
             progress: Progress = SILENT) -> tuple[dict[str, Any], float, dict[str, np.ndarray]]:
    """Figures on val and test (temperature fitted on val only) and the calibrated probabilities."""
    logits: dict[str, np.ndarray] = {}
    for side in ("val", "test"):
        idx = data.side(side)
        if len(idx):
            what = f"evaluating {side}" + (" (TTA x8)" if tta else "")
            advance = progress.task(what, len(idx))
            logits[side] = predict_logits(model, data.images[idx], pre, tta, advance)
            progress.done(what)
    return calibrated(logits, {side: data.y[data.side(side)] for side in logits}, data.classes)
