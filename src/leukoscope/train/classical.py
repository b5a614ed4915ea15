"""A classical run: a registered scikit-learn pipeline fitted on image features, as a bundle.

``train_classical(m, config, out)`` takes the rows a network run would (``train.data``: the same
rare classes merged or dropped, subset and grouped train / val / test split for the same seed),
computes the features the bundle will declare (``config.features``, cached on disk), fits the
pipeline on the train side, fits the calibration temperature on the val side and scores val and
test with it, the way a network run does. The run directory is laid out as a network's
(``train.rundir``): ``out/bundle``. ``benchmark --save-best`` writes its bundle with the same
``fit_on_train`` and ``write_bundle``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.bundle import Bundle, finish_bundle, load_bundle, write_json, writing_bundle
from leukoscope.bundle.classical import WEIGHTS, log_probabilities, save_pipeline
from leukoscope.data.manifest import Manifest, classes, label_indices, skipped_files
from leukoscope.errors import ConfigError, DataError
from leukoscope.features.cache import feature_matrix
from leukoscope.models.unfamiliar import Scorer
from leukoscope.progress import SILENT, Progress
from leukoscope.train import rundir
from leukoscope.train.config import TrainConfig
from leukoscope.train.data import bundle_split, describe, run_rows, run_split, split_record
from leukoscope.train.heldout import calibrated, operating_point
from leukoscope.train.outliers import UNMEASURABLE, run_outliers, usable, write_record
from leukoscope.train.unfamiliar import classical_scorer, exposure, save_scorer, unfamiliar_config


def train_classical(m: Manifest, config: TrainConfig, out: Path, progress: Progress = SILENT) -> Bundle:
    """Fit the classical model ``config.model`` on ``config.features`` of ``m``; the bundle in ``out/bundle``.

    A finished run directory is not refitted: rerunning returns its bundle.
    """
    from leukoscope.models.registry import get_model

    outliers = run_outliers(config, m)
    out, cfg, done = rundir.begin(config, out, "classical", m, outliers)
    if done is not None:
        return done
    try:
        estimator = get_model(cfg.model).build(seed=cfg.seed)
    except Exception as e:  # noqa: BLE001 - a builder that cannot run here (a missing library) is one line
        raise ConfigError(f"--model {cfg.model}: cannot build ({type(e).__name__}: {e})") from None
    taken, rare = run_rows(m, cfg)
    rows, X, spec, skipped = feature_matrix(taken, str(cfg.features), progress=progress)
    if outliers is not None:  # featurised (and refused if unusable) before the model is fitted
        outliers, OX, bad = featurised_outliers(outliers, cfg, progress)
        skipped += bad
    split = run_split(taken, cfg, rows, progress)
    X = X[rows["path"].isin(split["path"]).to_numpy()]  # rows a split file leaves out are not used
    class_names = classes(split)
    y = np.asarray(label_indices(split, class_names))
    sides = split["side"].to_numpy()
    fitting = f"fitting {cfg.model}"
    advance = progress.task(fitting, 1)
    pipeline, logits = fit_on_train(estimator, X, y, sides, len(class_names))
    advance(1)
    progress.done(fitting)
    held_y = {s: y[sides == s] for s in logits}
    metrics, temperature, probs = calibrated(logits, held_y, class_names)
    metrics |= split_record(split)
    settings = {"model": cfg.model, "params": {}, "classes": class_names, "features": spec,
                "temperature": temperature, "protocol": metrics["protocol"], "dedupe": metrics["dedupe"],
                "data": describe(rows), "train": cfg.as_dict()}
    op = operating_point(cfg.positive, cfg.target_sensitivity, probs, held_y, class_names, metrics)
    if op is not None:
        settings["operating_point"] = op
    if outliers is None:
        scorer = classical_scorer(X, y, sides, logits.get("val"), temperature, cfg.seed)
    else:
        scorer, metrics["outliers"] = exposure(
            X[sides == "train"], y[sides == "train"],
            (X[sides == "val"], logits.get("val", np.zeros((0, len(class_names))))),
            (X[sides == "test"], logits.get("test", np.zeros((0, len(class_names))))), temperature, outliers,
            (OX, log_probabilities(pipeline, OX, len(class_names))), (str(cfg.outliers), cfg.outlier_class),
            standardise=True)
    settings |= unfamiliar_config(scorer)
    if cfg.class_map is not None:
        settings["class_map"] = cfg.class_map
    if rare.types:
        metrics["rare_classes"] = settings["rare_classes"] = rare.to_json()
    write_json(out / "metrics.json", metrics)
    write_bundle(out / rundir.BUNDLE, pipeline, settings, metrics, bundle_split(split), scorer)
    if outliers is not None:
        write_record(out, outliers)
    rundir.mark_done(out)
    rundir.write_skipped(out, skipped_files(m) + skipped)
    return load_bundle(out / rundir.BUNDLE)


def featurised_outliers(outliers: Manifest, cfg: TrainConfig, progress: Progress = SILENT
                        ) -> tuple[Manifest, np.ndarray, list[tuple[str, str]]]:
    """The outlier cells whose features are all finite (checked again: ``train.outliers.usable``), their
    feature rows, and the files skipped (the reader's, unreadable ones, unmeasurable ones)."""
    kept, X, _, bad = feature_matrix(outliers, str(cfg.features), progress=progress)
    finite = np.isfinite(X).all(axis=1)
    bad = skipped_files(outliers) + bad + [(p, UNMEASURABLE) for p in kept.loc[~finite, "path"]]
    return usable(kept, finite, f"--outliers {cfg.outliers}", cfg.outlier_class), X[finite], bad


def fit_on_train(estimator: Any, X: np.ndarray, y: np.ndarray, sides: np.ndarray, n_classes: int
                 ) -> tuple[Any, dict[str, np.ndarray]]:
    """``estimator`` fitted on the rows whose side is ``train``; its logits on the val and test rows
    (the sides present), for the temperature and the held-out figures."""
    train = sides == "train"
    try:
        pipeline = estimator.fit(X[train], y[train])
        logits = {side: log_probabilities(pipeline, X[sides == side], n_classes)
                  for side in ("val", "test") if (sides == side).any()}
    except (ValueError, np.linalg.LinAlgError) as e:  # fewer images than an inner CV's folds, or neighbours
        raise DataError(f"the training side ({int(train.sum())} images) is too small for this model "
                        f"({' '.join(str(e).split())}); use more data or a larger --subset") from None
    return pipeline, logits


def write_bundle(out: Path, pipeline: Any, config: dict[str, Any], metrics: dict[str, Any],
                 split: pd.DataFrame, scorer: Scorer | None = None) -> Path:
    """A classical bundle at ``out``, atomically: the pipeline (skops, allow-listed types only), the
    unfamiliarity scorer if any and the family-independent files (``config`` gets ``family: classical``)."""
    with writing_bundle(out) as folder:
        save_pipeline(pipeline, folder / WEIGHTS)
        save_scorer(folder, scorer)
        finish_bundle(folder, {"family": "classical", **config}, metrics, split=split)
    return Path(out)
