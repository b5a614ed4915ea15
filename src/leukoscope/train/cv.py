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
from leukoscope.progress import SILENT, Progress
from leukoscope.train import rundir
from leukoscope.train.config import TrainConfig
from leukoscope.train.data import decoded_rows, describe, prepare_split
from leukoscope.train.heldout import scores
from leukoscope.train.network import fit_and_bundle


def cross_validate(m: Manifest, config: TrainConfig, out: Path, progress: Progress = SILENT
                   ) -> dict[str, Any]:
    """Subject-grouped K-fold: each fold is the test side once (val carved from the rest).

    Returns per-fold and pooled figures (weighted F1 is the C-NMC challenge metric) for the
    fine-tuned network and, for pretrained models, frozen features + logistic regression.
    Written to ``out/cv.json``; fold runs live in ``out/fold-<i>`` and resume like any run.
    """
    out = Path(out)
    cfg = config.resolved()
    if cfg.family != "network":
        raise ConfigError(f"--model {cfg.model}: cross-validation here is for networks; "
                          "a classical model's is leukoscope benchmark --models")
    out.mkdir(parents=True, exist_ok=True)
    rundir.check_same(out, cfg)
    cfg.write(out)
    m, images, pre0, class_names, _ = decoded_rows(m, cfg, progress)
    folds = kfold(m, cfg.cv, cfg.seed)
    per_fold, pooled_y, pooled_p = [], [], []
    for f in sorted(folds["fold"].unique()):
        split = _fold_split(folds, f, cfg)
        data, pre = prepare_split(split, images, pre0, cfg, class_names)
        fold_cfg = TrainConfig(**{**cfg.as_dict(), "cv": 0})
        bundle, probs = fit_and_bundle(data, pre, fold_cfg, out / f"fold-{f}", progress, describe(m))
        y_test = data.y[data.side("test")]
        pooled_y.append(y_test)
        pooled_p.append(probs["test"])
        per_fold.append(_fold_row(int(f), split, bundle.metrics(), len(y_test)))
    y_all, p_all = np.concatenate(pooled_y), np.concatenate(pooled_p)
    pooled = scores(y_all, p_all, class_names)
    table = pd.DataFrame(per_fold)
    result: dict[str, Any] = {
        "protocol": split_protocol(folds), "k": int(folds["fold"].nunique()), "folds": per_fold,
        "pooled": pooled,
        "f1_weighted_mean": float(table["f1_weighted"].mean()),
        "f1_weighted_std": float(table["f1_weighted"].std(ddof=1)) if len(table) > 1 else 0.0,
        "f1_weighted_ci95": list(bootstrap_ci(y_all, p_all.argmax(1), pooled_groups(folds), cfg.seed)),
    }
    if "frozen_lr_f1_weighted" in table:
        result["frozen_lr_f1_weighted_mean"] = float(table["frozen_lr_f1_weighted"].mean())
        result["frozen_lr_f1_weighted_std"] = float(table["frozen_lr_f1_weighted"].std(ddof=1))
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
           "f1_weighted": mets["test"]["f1_weighted"], "accuracy": mets["test"]["accuracy"],
           "balanced_accuracy": mets["test"]["balanced_accuracy"]}
    if "frozen_lr" in mets and "test" in mets["frozen_lr"]:
        row["frozen_lr_f1_weighted"] = mets["frozen_lr"]["test"]["f1_weighted"]
    return row


def pooled_groups(folds: Split) -> np.ndarray:
    """Group of each pooled out-of-fold prediction, in the order ``cross_validate`` pools them."""
    return np.concatenate([folds.loc[folds["fold"] == f, "group"].to_numpy()
                           for f in sorted(folds["fold"].unique())])


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, seed: int, n: int = 2000
                 ) -> tuple[float, float]:
    """95% bootstrap interval of the weighted F1, resampling whole groups (subjects) with replacement."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in ids}
    vals = []
    for _ in range(n):
        i = np.concatenate([rows[g] for g in rng.choice(ids, size=len(ids))])
        vals.append(f1_score(y[i], pred[i], average="weighted", zero_division=0))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)
