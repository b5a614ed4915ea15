"""The classical leaderboard: every registered model, grouped k-fold CV on one feature matrix.

The rows are split by the one protocol every command shares (``train.data.protocol_split``: the same
train / val / test sides ``leukoscope train`` and ``tune`` use for the same data and seed, duplicates
grouped by default, or the sides of ``--split FILE``). The CV runs on the train and val sides only; the
test side is kept for ``save_best``, which fits on train, calibrates on val and scores test once.
Features are extracted once per run (cached on disk), folds come from ``data.splits.kfold`` (by
subject, image-level where there are none, and every output says which), and each model's whole
CV runs in its own worker process so a per-model time limit can stop it and a crash cannot take
the run down: a failed or timed-out model becomes a row with its error, the rest go on. Workers
fork from a ``forkserver`` that has scikit-learn, XGBoost and LightGBM imported once, so starting
one costs milliseconds and never inherits a parent's OpenMP state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.crossval import METRICS, run_models
from leukoscope.data.classes import display_names, shown_classes
from leukoscope.data.classmap import counts_line
from leukoscope.data.manifest import IMAGE_LEVEL_WARNING, Manifest, classes, label_indices, labelled
from leukoscope.data.rare import RareReport, rare_classes
from leukoscope.data.splits import kfold, split_protocol, split_warnings
from leukoscope.evaluate import shortcut
from leukoscope.features.cache import feature_matrix
from leukoscope.io import write_csv_atomic, write_json_atomic, write_text_atomic
from leukoscope.progress import SILENT, Progress

#: Metrics that also get a 95% subject-bootstrap interval of the pooled out-of-fold predictions
#: (``_lo`` / ``_hi`` columns): every headline figure.
INTERVALS = ("accuracy", "balanced_accuracy", "roc_auc", "f1_weighted", "f1_macro")


@dataclass
class Leaderboard:
    """One run's results and everything needed to say how they were obtained."""

    table: pd.DataFrame
    protocol: str
    classes: list[str]
    features: dict[str, Any]
    folds: int
    n_images: int
    n_groups: int
    seed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    data: str = ""
    #: model -> builder parameters other than the defaults (e.g. from ``leukoscope tune``)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the classes merged into ``other`` or left out as too rare, before the folds
    rare: RareReport | None = None
    #: the sides the CV ran on (``train+val``, or ``folds of FILE``) and the test images held out
    cv_on: str = "train+val"
    held_out: int = 0
    #: the split's caveats (``data.splits.split_warnings``): no subject ids, no dedupe, synthetic
    split_warning: str | None = None
    #: what ``--class-map`` did to the labels before the folds (``data.classmap.ClassMap.counts``)
    class_map: dict[str, Any] | None = None

    @property
    def shown_classes(self) -> list[str]:
        """The classes as the reports show them (``hem (normal)``), as the evaluation report does."""
        return list(shown_classes(self.classes).values())

    @property
    def too_small(self) -> str | None:
        """The "too small to rank models" warning for this data (None when it is large enough)."""
        from leukoscope.evaluate.intervals import too_small

        return too_small(self.n_images, None if self.protocol == "image-level" else self.n_groups)

    @property
    def warning(self) -> str | None:
        caveats = [self.split_warning or (IMAGE_LEVEL_WARNING if self.protocol == "image-level" else None),
                   self.too_small]
        return "; ".join(w for w in caveats if w) or None

    @property
    def where(self) -> str:
        """Which side the leaderboard's figures come from, as every output says it."""
        held = f"; test side ({self.held_out} images) held out" if self.held_out else ""
        return f"{self.folds}-fold CV on the {self.cv_on} side(s), {self.n_images} images{held}"

    @property
    def best(self) -> str | None:
        ok = self.table[(self.table["status"] == "ok") & (self.table["model"] != shortcut.LABEL)]
        return None if ok.empty else str(ok.iloc[0]["model"])

    @property
    def shortcut(self) -> dict[str, Any] | None:
        """The colour shortcut row against the best model, with its warning (``evaluate.shortcut``)."""
        return shortcut.leaderboard_check(self.table, len(self.classes))

    def summary(self) -> dict[str, Any]:
        """The run's settings, as written next to its outputs."""
        return {"protocol": self.protocol, "warning": self.warning, "data": self.data,
                "classes": self.classes, "display_names": display_names(self.classes),
                "features": self.features, "folds": self.folds,
                "images": self.n_images, "groups": self.n_groups, "seed": self.seed,
                "cv_on": self.cv_on, "held_out_test": self.held_out, "figures_from": self.where,
                "best": self.best, "params": self.params, "too_small": self.too_small,
                "shortcut": self.shortcut, "class_map": self.class_map,
                "rare_classes": self.rare.to_json() if self.rare and self.rare.types else None,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def _table(results: dict[str, dict], protocol: str, y: np.ndarray, groups: np.ndarray, seed: int
           ) -> pd.DataFrame:
    """One row per model: mean and std over folds, the ``INTERVALS``' pooled out-of-fold figure with its
    95% interval over resampled groups, its status; sorted by balanced accuracy, failures last."""
    from leukoscope.evaluate.intervals import bootstrap, rank_auc, rows_auc
    from leukoscope.evaluate.metrics import bootstrap_ci, label_figure

    rows = []
    for name, res in results.items():
        row: dict[str, Any] = {"model": name}
        if "error" in res:
            row |= {"status": res.get("status", "failed"), "error": res["error"]}
        else:
            per = pd.DataFrame(res["folds"]).astype(float)
            for key in METRICS:
                row[f"{key}_mean"] = per[key].mean()
                row[f"{key}_std"] = per[key].std(ddof=0)
            k = int(max(y.max(initial=0), res["pred"].max(initial=0))) + 1
            for key in INTERVALS:
                if key == "roc_auc":  # from the pooled out-of-fold probabilities
                    p = res["proba"]
                    row[f"{key}_pooled"] = rank_auc(y, p)
                    ci = bootstrap(partial(rows_auc, y, p), groups, seed)
                    row[f"{key}_lo"], row[f"{key}_hi"] = ci or (None, None)
                    continue
                row[f"{key}_pooled"] = label_figure(y, res["pred"], k, key)
                row[f"{key}_lo"], row[f"{key}_hi"] = bootstrap_ci(y, res["pred"], groups, seed, metric=key)
            row |= {"cpu_s": res.get("cpu_s"), "status": "ok", "error": ""}
        rows.append(row | {"protocol": protocol})
    cols = (["model"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
            + [f"{k}_{s}" for k in INTERVALS for s in ("pooled", "lo", "hi")]
            + ["cpu_s", "status", "error", "protocol"])
    df = pd.DataFrame(rows).reindex(columns=cols)
    df["_ok"] = df["status"] == "ok"
    df = df.sort_values(["_ok", "balanced_accuracy_mean", "model"], ascending=[False, False, True])
    return df.drop(columns="_ok").reset_index(drop=True)


def build_estimators(models: Sequence[str], seed: int, params: dict[str, dict[str, Any]] | None = None
                     ) -> tuple[dict[str, Any], dict[str, dict]]:
    """Unfitted estimators by name (built with ``params[name]`` if given), and an error row for any
    builder that raises."""
    from leukoscope.models.registry import get_model

    built, errors = {}, {}
    for name in models:
        spec = get_model(name)
        if spec.family != "classical":
            from leukoscope.errors import ConfigError

            raise ConfigError(f"--models: {name!r} is a {spec.family} model, not a classical one")
        try:
            built[name] = spec.build(seed=seed, **(params or {}).get(name, {}))
        except Exception as e:
            errors[name] = {"error": f"cannot build: {type(e).__name__}: {e}"}
    return built, errors


def benchmark(m: Manifest, *, features: str = "handcrafted", k: int = 5,
              models: Sequence[str] | None = None, timeout: float | None = 300.0,
              jobs: int | None = None, seed: int = 0, cache: Path | None = None,
              feature_params: dict[str, Any] | None = None,
              params: dict[str, dict[str, Any]] | None = None,
              min_cells: int | None = None, rare: str | None = None, split_file: Path | None = None,
              dedupe: bool = True, val: float = 0.15, test: float = 0.15, progress: Progress = SILENT
              ) -> tuple[Leaderboard, Manifest, np.ndarray]:
    """Run the leaderboard on the labelled rows of ``m``, classes of fewer than ``min_cells`` cells
    merged into ``other`` or dropped (``rare``; None: the defaults of ``data.rare.rare_classes``);
    returns it with the rows (their ``side``, and the CV ``fold`` of the train and val rows) and the
    matrix it used.

    The rows are split as ``leukoscope train`` splits them (``val``, ``test``, ``seed``, ``dedupe``) or
    as ``split_file`` says; the CV runs on the train and val sides (or on the file's folds).
    ``progress`` has two tasks: the features (images), then the models as each one finishes.
    """
    import os

    from leukoscope.models.registry import list_models
    from leukoscope.train.data import protocol_split

    names = list(models) if models else list_models(family="classical")
    rows, report = rare_classes(labelled(m), min_cells, rare)
    sides = protocol_split(rows, val=val, test=test, seed=seed, dedupe=dedupe, split_file=split_file,
                           cache=cache, progress=progress)
    kept, X, spec, skipped = feature_matrix(sides, features, cache=cache, feature_params=feature_params,
                                            progress=progress)
    if split_file is not None and "fold" in kept:  # a k-fold split file: its folds, every row
        split, dev, cv_on = kept, np.ones(len(kept), bool), f"folds of {split_file}"
    else:
        dev = (kept["side"] != "test").to_numpy()
        folds = np.full(len(kept), -1)
        folds[dev] = kfold(kept[dev], k=k, seed=seed)["fold"].to_numpy()
        split, cv_on = kept.assign(fold=folds), "train+val"
    part = split[dev]
    class_names = classes(split)
    y = np.asarray(label_indices(part, class_names))
    built, errors = build_estimators(names, seed, params)
    colour = shortcut.colour_matrix(split, cache, progress)
    advance = progress.task("models", len(names))
    advance(len(errors))
    results = run_models(built, X[dev], y, part["fold"].to_numpy(), class_names, timeout=timeout,
                         jobs=jobs or os.cpu_count() or 1, on_done=lambda name, res: advance(1))
    # the colour shortcut baseline, scored on the same folds (never "best", see evaluate.shortcut)
    results |= run_models({shortcut.LABEL: shortcut.estimator(seed)}, colour[dev], y, part["fold"].to_numpy(),
                          class_names, timeout=timeout)
    progress.done("models")
    proto = split_protocol(part)
    data = ", ".join(sorted(set(split["dataset"]))) if "dataset" in split else ""
    table = shortcut.baseline_last(_table(results | errors, proto, y, part["group"].to_numpy(), seed))
    lb = Leaderboard(table=table, protocol=proto, classes=class_names,
                     features=spec, folds=int(part["fold"].nunique()), n_images=len(part),
                     n_groups=int(part["group"].nunique()), seed=seed, skipped=skipped, data=data,
                     params=dict(params or {}), rare=report, cv_on=cv_on, held_out=int((~dev).sum()),
                     split_warning=split_warnings(split))
    return lb, split, X


def cell(row: pd.Series, key: str) -> str:
    """``mean ± std`` for a metric of one leaderboard row (``-`` when undefined), then the interval
    ``[lo, hi]`` where the metric has one."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or pd.isna(mean):
        return "-"
    digits = 2 if key.endswith("_s") else 3
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    return text if lo is None or pd.isna(lo) else f"{text} [{lo:.2f}, {hi:.2f}]"


def to_markdown(lb: Leaderboard) -> str:
    """The leaderboard as a Markdown table, with its protocol and settings above it."""
    lines = [f"# Leaderboard ({lb.protocol})", "",
             f"- protocol: **{lb.protocol}**, {lb.where}, {lb.n_groups} groups, seed {lb.seed}",
             f"- features: {lb.features['kind']} "
             + ", ".join(f"{k}={v}" for k, v in lb.features["params"].items()),
             f"- classes: {', '.join(lb.shown_classes)}",
             f"- mean ± std over folds; [95% interval] of the pooled out-of-fold figure over resampled "
             f"groups ({', '.join(INTERVALS)})"]
    if lb.class_map:
        lines.append(f"- {counts_line(lb.class_map)}")
    if lb.rare and lb.rare.line():
        lines.append(f"- rare classes: {lb.rare.line()}")
    if lb.data:
        lines.append(f"- data: {lb.data}")
    if lb.warning:
        lines.append(f"- warning: {lb.warning}")
    if lb.shortcut:
        lines.append(f"- {shortcut.leaderboard_line(lb.shortcut)}")
    if lb.skipped:
        lines.append(f"- skipped {len(lb.skipped)} unreadable image(s)")
    lines += ["", "| Model | " + " | ".join(METRICS.values()) + " | Status |",
              "|---" * (len(METRICS) + 2) + "|"]
    for _, row in lb.table.iterrows():
        status = "ok" if row["status"] == "ok" else f"{row['status']}: {row['error']}"
        lines.append(f"| {row['model']} | " + " | ".join(cell(row, k) for k in METRICS)
                     + f" | {status.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _bar_plot(lb: Leaderboard) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = lb.table[lb.table["status"] == "ok"].iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(ok), 3) + 1))
    mean, std = ok["balanced_accuracy_mean"], ok["balanced_accuracy_std"]
    ax.barh(ok["model"], mean, xerr=std, capsize=3,
            color=["#bf8f5b" if n == shortcut.LABEL else "#5b6bbf" for n in ok["model"]])
    for y, (v, e) in enumerate(zip(mean, std, strict=True)):
        ax.text(v + e + 0.003, y, f"{v:.3f}", fontsize=8, va="center")
    low = float(np.floor(20 * max(0.0, float((mean - std).min()) - 0.02)) / 20) if len(ok) else 0.0
    ax.set_xlim(low, 1)  # zoomed: the differences that matter are a few points wide
    ax.set_xlabel(f"balanced accuracy ({lb.folds}-fold CV on {lb.cv_on}, {lb.protocol})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def write_leaderboard(lb: Leaderboard, out: Path) -> dict[str, Path]:
    """Write leaderboard.csv, leaderboard.md, leaderboard.html and run.json (atomically)."""
    from leukoscope import __version__
    from leukoscope.reports.html import figure_to_data_uri, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "leaderboard.csv", "md": out / "leaderboard.md",
             "html": out / "leaderboard.html", "json": out / "run.json"}
    write_csv_atomic(paths["csv"], lb.table)
    write_text_atomic(paths["md"], to_markdown(lb))
    rows = [{"model": r["model"], "cells": [cell(r, k) for k in METRICS], "status": r["status"],
             "error": r["error"]} for _, r in lb.table.iterrows()]
    write_report(paths["html"], "leaderboard.html", title="Classical leaderboard",
                 protocol=lb.protocol, warning=lb.warning, version=__version__, run=lb.summary(),
                 classes=lb.shown_classes,
                 rare_line=lb.rare.line() if lb.rare else None,
                 class_map_line=counts_line(lb.class_map) if lb.class_map else None,
                 shortcut_line=shortcut.leaderboard_line(lb.shortcut) if lb.shortcut else None,
                 headers=list(METRICS.values()), rows=rows, plot=figure_to_data_uri(_bar_plot(lb)))
    write_json_atomic(paths["json"], lb.summary())
    return paths


def save_best(lb: Leaderboard, split: Manifest, X: np.ndarray, out: Path, *, model: str | None = None,
              class_map: dict[str, Any] | None = None) -> Path:
    """Refit the winner (or ``model``) and write it as a classical bundle at ``out``.

    It is fitted on the train side of the leaderboard's split (``benchmark``'s rows and their
    ``side``), the calibration temperature fitted on its val side, and the figures in metrics.json
    measured on val and, once, on the test side the leaderboard's CV never saw; metrics.json also
    carries the CV figures (on the train and val sides) under ``cross_validation``. The bundle's
    split.csv holds all three sides, so ``evaluate --side test`` scores the same test side. ``class_map``
    (``ClassMap.to_json``) is recorded as ``train --class-map`` records it, so evaluate maps new cells alike.
    """
    from leukoscope.errors import ConfigError
    from leukoscope.train.classical import fit_on_train, write_bundle
    from leukoscope.train.data import bundle_split, split_record
    from leukoscope.train.heldout import calibrated
    from leukoscope.train.unfamiliar import classical_scorer, unfamiliar_config

    name = model or lb.best
    if name is None:
        raise ConfigError("--save-best: no model finished the leaderboard, nothing to save")
    if "side" not in split:
        raise ConfigError("--save-best needs a split with train / val / test sides, not only folds")
    row = lb.table[lb.table["model"] == name].iloc[0]
    built, errors = build_estimators([name], lb.seed, lb.params)
    if errors:
        raise ConfigError(f"--save-best: {errors[name]['error']}")
    side = split.drop(columns="fold", errors="ignore")
    y = np.asarray(label_indices(side, lb.classes))
    sides = side["side"].to_numpy()
    pipeline, held_out = fit_on_train(built[name], X, y, sides, len(lb.classes))
    metrics, temperature, _ = calibrated(held_out, {s: y[sides == s] for s in held_out}, lb.classes)
    metrics |= split_record(side) | {
        "cross_validation": {k: row[f"{k}_mean"] for k in METRICS if pd.notna(row[f"{k}_mean"])},
        "cross_validation_on": lb.where}
    config = {"model": name, "params": lb.params.get(name, {}),
              "classes": lb.classes, "features": lb.features,
              "temperature": temperature, "protocol": metrics["protocol"], "dedupe": metrics["dedupe"],
              "data": lb.data,
              "training": {"rows": int((sides == "train").sum()), "val_rows": int((sides == "val").sum()),
                           "test_rows": int((sides == "test").sum()), "seed": lb.seed, "cv_folds": lb.folds}}
    if class_map is not None:
        config["class_map"] = class_map
    scorer = classical_scorer(X, y, sides, held_out["val"], temperature, lb.seed)
    return write_bundle(out, pipeline, config | unfamiliar_config(scorer), metrics, bundle_split(side),
                        scorer)
