"""Splits that cannot leak: stratified, grouped by subject (or image), checked before use.

A Split is the manifest plus a ``side`` column (train / val / test) or a ``fold`` column
(0..k-1). Rows of one ``group`` (a subject, or a duplicate cluster after ``--dedupe``) always share
a side and a fold; ``check_no_leak`` enforces it and every function here calls it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from leukoscope.data.manifest import (
    Manifest,
    classes,
    labelled,
    protocol,
    validate,
    warnings_for,
)
from leukoscope.data.paths import resolved, stored
from leukoscope.errors import ConfigError, DataError, LeakageError
from leukoscope.io import write_csv_atomic

Split: TypeAlias = pd.DataFrame
SIDES = ("train", "val", "test")
OFFICIAL_CNMC = "official C-NMC split"


def require_classes(m: Manifest, minimum: int = 2) -> None:
    """Raise a clear error when a manifest has too few classes to train on."""
    found = classes(m)
    if len(found) < minimum:
        where = ", ".join(sorted(set(m.get("dataset", pd.Series(["input"])))))
        raise DataError(
            f"{where}: found {len(found)} class(es) {found}; need at least {minimum} to train"
        )


def check_no_leak(split: Split) -> None:
    """Raise ``LeakageError`` if any group sits on two sides or in two folds."""
    for col in ("side", "fold"):
        if col not in split:
            continue
        seen = split.dropna(subset=[col]).groupby("group")[col].nunique()
        bad = seen[seen > 1]
        if len(bad):
            g = bad.index[0]
            where = sorted(map(str, split.loc[split["group"] == g, col].unique()))
            raise LeakageError(
                f"{len(bad)} group(s) sit on more than one {col}; e.g. {g} in {', '.join(where)}"
            )


def _group_folds(m: Manifest, k: int, seed: int) -> np.ndarray:
    """Fold index per row from stratified group k-fold (k is capped by the groups of the rarest class)."""
    per_class = m.groupby("label")["group"].nunique()
    if per_class.min() < 2:
        rare = ", ".join(f"{c} ({n})" for c, n in per_class[per_class < 2].items())
        raise DataError(f"too few subjects or images to split: class {rare} has fewer than 2 groups; "
                        f"merge or leave out rare classes with --min-cells N --rare other|drop")
    k = max(2, min(k, int(per_class.min())))
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(m), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny sets
        for i, (_, test_idx) in enumerate(sgkf.split(np.zeros(len(m)), m["label"], m["group"])):
            fold[test_idx] = i
    return fold


def kfold(m: Manifest, k: int = 5, seed: int = 0) -> Split:
    """Stratified k-fold, grouped: each row gets a ``fold`` in 0..k-1."""
    if k < 2:
        raise ConfigError(f"--k must be at least 2, got {k}")
    m = labelled(m)
    require_classes(m)
    out = m.copy()
    out["fold"] = _group_folds(m, k, seed)
    check_no_leak(out)
    return out


def _holdout(m: Manifest, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a grouped, stratified hold-out of about ``fraction`` of the rows."""
    k = max(2, round(1 / fraction))
    return _group_folds(m, k, seed) == 0


def _check_fractions(val: float, test: float) -> None:
    """Refuse fractions a hold-out cannot honour: it is one grouped fold of at least two, so at
    most half of what it is taken from (test from all rows, val from what test leaves)."""
    for name, v in (("val", val), ("test", test)):
        if not 0 <= v < 1:
            raise DataError(f"--{name} must be a fraction in [0, 1), got {v}")
    why = "a grouped hold-out is one fold of at least two"
    if test > 0.5:
        raise DataError(f"--test {test} is more than half: {why}")
    if val > 0.5 * (1 - test) + 1e-9:
        rest = f" of the {1 - test:g} that --test {test} leaves" if test else ""
        raise DataError(f"--val {val} is more than half{rest}: {why}")


def train_val_test(m: Manifest, val: float = 0.15, test: float = 0.15, seed: int = 0) -> Split:
    """Grouped, stratified train / val / test sides (``val`` and ``test`` are fractions)."""
    m = labelled(m)
    require_classes(m)
    _check_fractions(val, test)
    out = m.copy()
    out["side"] = "train"
    if test > 0:
        out.loc[_holdout(m, test, seed), "side"] = "test"
    rest = out["side"] == "train"
    if val > 0:
        sub = out[rest]
        mask = _holdout(sub, val / (1 - test), seed + 1)
        out.loc[sub.index[mask], "side"] = "val"
    check_no_leak(out)
    return out


def official_cnmc(m: Manifest, val: float = 0.15, seed: int = 0) -> Split:
    """C-NMC protocol: training folds -> train/val (subject-disjoint), labelled prelim set -> test."""
    m = labelled(m)
    if "source_fold" not in m or not (m["source_split"] == "val").any():
        raise DataError("the official C-NMC split needs a C-NMC download with validation_data/")
    train_part = m[m["source_split"] == "train"]
    inner = train_val_test(train_part, val=val, test=0.0, seed=seed)
    test_part = m[m["source_split"] == "val"].copy()
    test_part["side"] = "test"
    out = validate(pd.concat([inner, test_part], ignore_index=True))
    check_no_leak(out)
    return out


def split_protocol(split: Split) -> str:
    """The protocol label every report carries for this split."""
    if "side" in split:
        test = split.loc[split["side"] == "test", "source_split"]
        rest = split.loc[split["side"] != "test", "source_split"]
        if len(test) and test.eq("val").all() and rest.eq("train").all():
            return OFFICIAL_CNMC
    return protocol(split)


def describe_split(split: Split) -> dict:
    """Counts of images, subjects and classes per side or fold, plus the protocol and warnings."""
    col = "side" if "side" in split else "fold"
    per = {}
    for key, part in split.groupby(col, sort=True):
        per[str(key)] = {
            "images": int(len(part)),
            "groups": int(part["group"].nunique()),
            "per_class": {str(c): int(n) for c, n in part["label"].value_counts().sort_index().items()},
        }
    info: dict = {"protocol": split_protocol(split), "by": col, "parts": per}
    warning = warnings_for(split)
    if warning:
        info["warning"] = warning
    return info


def write_split(split: Split, path: Path) -> None:
    """Write a split CSV atomically (path, label, subject, group, side/fold, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(path, stored(split))  # paths relative to the data root


def read_split(path: Path, present: Iterable[str] | None = None) -> Split:
    """Read a split CSV written by ``write_split`` (paths ``data.paths.resolved``, a moved data folder found
    among ``present``) and re-check it for leakage."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    df = resolved(pd.read_csv(path, dtype={"subject": object, "group": str}), present)
    df["subject"] = df["subject"].where(df["subject"].notna(), None)
    if "side" not in df and "fold" not in df:
        raise DataError(f"{path}: a split needs a 'side' or 'fold' column")
    df = validate(df)
    check_no_leak(df)
    return df
