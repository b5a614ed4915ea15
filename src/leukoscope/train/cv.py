"""Subject-grouped K-fold cross-validation of a network: each fold is the test side once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.bundle import write_json
from leukoscope.data.manifest import Manifest
from leukoscope.data.splits import Split, check_no_leak, kfold, split_protocol, train_val_test
from leukoscope.errors import ConfigError
from leukoscope.evaluate.intervals import headline_intervals
from leukoscope.evaluate.metrics import bootstrap_ci
from leukoscope.progress import SILENT, Progress
from leukoscope.train import rundir
from leukoscope.train.config import TrainConfig
from leukoscope.train.data import decoded_rows, describe, prepare_split
from leukoscope.train.heldout import scores
from leukoscope.train.network import fit_and_bundle

#: The per-fold figures CV reports as mean, std and a subject-bootstrap interval: weighted F1 (the C-NMC
#: challenge's), and balanced accuracy and macro F1, which weigh every class alike (cell types).
FOLD_FIGURES = ("f1_weighted", "balanced_accuracy", "f1_macro")


def cross_validate(m: Manifest, config: TrainConfig, out: Path, progress: Progress = SILENT
                   ) -> dict[str, Any]:
    """Subject-grouped K-fold: each fold is the test side once (val carved from the rest).

    Returns per-fold and pooled figures (``FOLD_FIGURES``) for the fine-tuned network and, for
    pretrained models, frozen features + logistic regression, and the rare classes merged or dropped.
    Written to ``out/cv.json``; fold runs live in ``out/fold-<i>`` and resume like any run.
    """
    out = Path(out)
    cfg = config.resolved()
    if cfg.family != "network":
        raise ConfigError(f"--model {cfg.model}: cross-validation here is for networks; "
                          "a classical model's is leukoscope benchmark --models")
    with rundir.held(out):
        return _cross_validate(m, cfg, out, progress)


def _cross_validate(m: Manifest, cfg: TrainConfig, out: Path, progress: Progress) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    record = rundir.data_record(m)
    rundir.check_same(out, cfg, record)
    rundir.claim(out, cfg, record)
    rows = decoded_rows(m, cfg, progress)
    m, images, pre0, class_names = rows.rows, rows.images, rows.pre, rows.classes
    from leukoscope.audit.groups import grouped

    folds = kfold(grouped(m, cfg.dedupe, progress=progress), cfg.cv, cfg.seed)
    per_fold, pooled_y, pooled_p = [], [], []
    for i, f in enumerate(sorted(folds["fold"].unique())):
        split = _fold_split(folds, f, cfg)
        data, pre = prepare_split(split, images, pre0, cfg, class_names)
        fold_cfg = TrainConfig(**{**cfg.as_dict(), "cv": 0})
        bundle, probs = fit_and_bundle(data, pre, fold_cfg, out / f"fold-{f}", progress, describe(m),
                                       rows.rare, say_stretch=i == 0)  # the note once per run, not per fold
        y_test = data.y[data.side("test")]
        pooled_y.append(y_test)
        pooled_p.append(probs["test"])
        per_fold.append(_fold_row(int(f), split, bundle.metrics(), len(y_test)))
    y_all, p_all = np.concatenate(pooled_y), np.concatenate(pooled_p)
    pooled = scores(y_all, p_all, class_names)
    table = pd.DataFrame(per_fold)
    result: dict[str, Any] = {
        "protocol": split_protocol(folds), "k": int(folds["fold"].nunique()), "classes": class_names,
        "folds": per_fold, "pooled": pooled}
    for key in FOLD_FIGURES:
        result |= {f"{key}_mean": float(table[key].mean()),
                   f"{key}_std": float(table[key].std(ddof=1)) if len(table) > 1 else 0.0,
                   f"{key}_ci95": list(bootstrap_ci(y_all, p_all.argmax(1), pooled_groups(folds), cfg.seed,
                                                    metric=key))}
    # the pooled figures' other intervals (accuracy, ROC AUC): by subject, or Wilson / by image
    more = headline_intervals(y_all, p_all, list(pooled_groups(folds, "subject")), cfg.seed)
    result |= {f"{key}_ci95": more["ci95"][key] for key in ("accuracy", "roc_auc")}
    if rows.rare.types:
        result["rare_classes"] = rows.rare.to_json()
    for key in (f"frozen_lr_{k}" for k in FOLD_FIGURES if f"frozen_lr_{k}" in table):
        result[f"{key}_mean"] = float(table[key].mean())
        result[f"{key}_std"] = float(table[key].std(ddof=1))
    write_json(out / "cv.json", result)
    return result


def _fold_split(folds: Split, f: int, cfg: TrainConfig) -> Split:
    """Fold ``f`` as the test side, the other folds split into train / val (grouped), checked for leaks."""
    test_mask = (folds["fold"] == f).to_numpy()
    rest = folds[~test_mask].drop(columns="fold")
    inner = train_val_test(rest, val=cfg.val, test=0.0, seed=cfg.seed)
    side = pd.Series("test", index=folds.index)
    side.loc[np.flatnonzero(~test_mask)] = inner["side"].to_numpy()
    split = folds.drop(columns="fold").assign(side=side.to_numpy())
    check_no_leak(split)
    return split


def _fold_row(f: int, split: Split, mets: dict[str, Any], n_test: int) -> dict[str, Any]:
    row = {"fold": f, "test_images": n_test,
           "test_groups": int(split.loc[split["side"] == "test", "group"].nunique()),
           "accuracy": mets["test"]["accuracy"], **{k: mets["test"][k] for k in FOLD_FIGURES}}
    if "frozen_lr" in mets and "test" in mets["frozen_lr"]:
        row |= {f"frozen_lr_{k}": mets["frozen_lr"]["test"][k] for k in FOLD_FIGURES}
    return row


def pooled_groups(folds: Split, column: str = "group") -> np.ndarray:
    """Group (or another ``column``) of each pooled out-of-fold prediction, in the order
    ``cross_validate`` pools them."""
    return np.concatenate([folds.loc[folds["fold"] == f, column].to_numpy()
                           for f in sorted(folds["fold"].unique())])
