"""Splits that cannot leak: stratified, grouped by subject (or image), checked before use.

A Split is the manifest plus a ``side`` column (train / val / test) or a ``fold`` column
(0..k-1). Rows of one ``group`` (a subject, or a duplicate cluster after ``--dedupe``) always share
a side and a fold; ``check_no_leak`` enforces it and every function here calls it.

By default every command groups the audit's duplicate clusters with the subjects before splitting
(``audit.groups``), and marks the rows ``dedupe`` True; a split made without that (``--no-dedupe``,
or a split file from before) says so in every summary (``split_warnings``). A split file round-trips
path, label, subject, group and side (or fold); ``apply_split`` lays it over the images a command
read, refusing one whose files are not among them or whose labels disagree.
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
#: Column saying the groups were merged over the audit's duplicate clusters before the split.
DEDUPE = "dedupe"
NO_DEDUPE_WARNING = (
    "split made without the audit's duplicate clusters (--no-dedupe, or a split file without a "
    "'dedupe' column): near-copies of one cell may sit on two sides, so figures may be optimistic"
)


def require_classes(m: Manifest, minimum: int = 2) -> None:
    """Raise a clear error when a manifest has too few classes to train on."""
    found = classes(m)
    if len(found) < minimum:
        where = ", ".join(sorted(set(m.get("dataset", pd.Series(["input"])))))
        raise DataError(
            f"{where}: found {len(found)} class(es) {found}; need at least {minimum} to train"
        )


def check_no_leak(split: Split) -> None:
    """Raise ``LeakageError`` if any group, or any known subject, sits on two sides or in two folds (a
    split file edited by hand may regroup a subject's images)."""
    for col in ("side", "fold"):
        if col not in split:
            continue
        for key in ("group", "subject"):
            if key not in split:
                continue
            seen = split.dropna(subset=[col, key]).groupby(key)[col].nunique()
            bad = seen[seen > 1]
            if len(bad):
                g = bad.index[0]
                where = sorted(map(str, split.loc[split[key] == g, col].dropna().unique()))
                raise LeakageError(
                    f"{len(bad)} {key}(s) sit on more than one {col}; e.g. {g} in {', '.join(where)}"
                )


def _group_folds(m: Manifest, k: int, seed: int) -> np.ndarray:
    """Fold index per row from stratified group k-fold (k is capped by the groups of the rarest class)."""
    per_class = m.groupby("label")["group"].nunique()
    if per_class.min() < 2:
        rare = ", ".join(f"{c} ({n})" for c, n in per_class[per_class < 2].items())
        subjects = m.groupby("label")["subject"].nunique() if "subject" in m else per_class
        joined = deduped(m) and any(subjects.get(c, 0) >= 2 for c in per_class[per_class < 2].index)
        merged = (" (their subjects were joined over the audit's duplicate clusters: `leukoscope data audit` "
                  "shows them, --no-dedupe keeps subjects apart)" if joined else "")
        raise DataError(f"too few subjects or images to split: class {rare} has fewer than 2 groups{merged}; "
                        "merge or leave out rare classes (train, data split, benchmark: --min-cells N --rare "
                        "other|drop)")
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
    """Boolean mask of a grouped, stratified hold-out of about ``fraction`` of the rows: one of
    ``_folds(fraction)`` folds."""
    return _group_folds(m, _folds(fraction), seed) == 0


def _folds(fraction: float) -> int:
    return max(2, round(1 / fraction))


def holdout_shares(val: float, test: float) -> dict[str, float]:
    """About what share of the rows ``train_val_test`` puts on the val and test sides: one fold of
    ``_folds`` each (test of all rows, val of what test leaves), so 0.4 asked gives a half."""
    t = 1 / _folds(test) if test > 0 else 0.0
    return {"val": (1 - t) / _folds(val / (1 - test)) if val > 0 else 0.0, "test": t}


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
        mask = _holdout(sub, val / (1 - test), (seed + 1) % 2**32)  # numpy seeds stop at 2**32 - 1
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
    info: dict = {"protocol": split_protocol(split), "by": col, "parts": per, "dedupe": deduped(split)}
    warning = split_warnings(split)
    if warning:
        info["warning"] = warning
    return info


def deduped(split: Split) -> bool:
    """True when the split's groups were merged over the audit's duplicate clusters."""
    return DEDUPE in split and bool(split[DEDUPE].fillna(False).astype(bool).all())


def split_warnings(split: Split) -> str | None:
    """The caveats every figure on ``split`` must carry: the manifest's, and a missing dedupe."""
    notes = [w for w in (warnings_for(split), None if deduped(split) else NO_DEDUPE_WARNING) if w]
    return "; ".join(notes) or None


def mark_dedupe(m: Manifest, done: bool) -> Manifest:
    """``m`` with the ``dedupe`` column saying whether its groups were merged over duplicates."""
    return m.assign(**{DEDUPE: done})


def side_sizes(split: Split) -> dict[str, int]:
    """Images per side (``train``, ``val``, ``test``) for the outputs that name their side."""
    return {str(k): int(v) for k, v in split["side"].value_counts().sort_index().items()}


def write_split(split: Split, path: Path) -> None:
    """Write a split CSV atomically (path, label, subject, group, side/fold, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(path, stored(split))  # paths relative to the data root


def read_split(path: Path, present: Iterable[str] | None = None) -> Split:
    """Read a split CSV written by ``write_split`` and re-check it for leakage.

    Paths stored relative to a recorded data root are joined to it again (``data.paths.resolved``; a
    moved data folder is found among ``present``); other relative paths are matched by ``apply_split``
    against the images read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        # only a blank field is missing: a label, subject or group spelled NA, None, null or nan is a name
        df = pd.read_csv(path, dtype={"path": str, "label": str, "subject": object, "group": str},
                         keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable split CSV ({e})") from None
    need = {"path", "label", "group"} - set(df.columns)
    if need or ("side" not in df and "fold" not in df):
        raise DataError(f"{path}: a split needs columns path, label, group and side or fold")
    df = resolved(df, present)
    if "subject" not in df:
        df["subject"] = None
    df["subject"] = df["subject"].astype(object).where(df["subject"].notna(), None)
    if "source_split" not in df:
        df["source_split"] = "train"
    col = "side" if "side" in df else "fold"
    blank = int(df[col].isna().sum())
    if blank:  # such a row would be on no side (in no fold): silently left out of training and evaluation
        raise DataError(f"{path}: {blank} row(s) with a blank {col}"
                        + (f" (each needs one of {', '.join(SIDES)})" if col == "side" else ""))
    if col == "side" and not set(df["side"]) <= set(SIDES):
        raise DataError(f"{path}: side must be one of {', '.join(SIDES)}")
    df = validate(df)
    check_no_leak(df)
    df.attrs["source"] = str(path)
    return df


def resolve_paths(split_paths: pd.Series, images: pd.Series) -> list[str | None]:
    """The image of ``images`` each split path names: an absolute path itself, a relative one the
    image whose path ends with it (the images' data root joined with it); None when not found."""
    absolute = set(images)
    by_name: dict[str, list[str]] = {}
    for p in images:
        by_name.setdefault(Path(p).name, []).append(p)
    out: list[str | None] = []
    for p in split_paths:
        if Path(p).is_absolute():
            out.append(p if p in absolute else None)
            continue
        tail = Path(p).as_posix().lstrip("./")
        hits = [q for q in by_name.get(Path(p).name, []) if Path(q).as_posix().endswith("/" + tail)]
        out.append(hits[0] if len(hits) == 1 else None)
    return out


def apply_split(m: Manifest, split: Split) -> Split:
    """The rows of ``m`` that ``split`` names, with its side (or fold) and group, in ``m``'s order.

    Refuses, in one line naming the file, a split whose images are not among ``m``'s (missing or
    not given) or whose labels disagree with ``m``'s. Rows of ``m`` the split leaves out are not used.
    """
    where = split.attrs.get("source", "--split")
    resolved = resolve_paths(split["path"].astype(str), m["path"].astype(str))
    missing = [p for p, r in zip(split["path"], resolved, strict=True) if r is None]
    if missing:
        raise DataError(f"{where}: {len(missing)} of its {len(split)} image(s) are missing or not among "
                        f"the images given (e.g. {missing[0]})")
    col = "side" if "side" in split else "fold"
    extra = [c for c in (col, DEDUPE) if c in split]
    theirs = split[["label", "group", *extra]].assign(path=resolved).set_index("path")
    ours = m[m["path"].isin(theirs.index)]
    wrong = ours["label"].to_numpy() != theirs.loc[ours["path"], "label"].to_numpy()
    if wrong.any():
        p, here = ours["path"].to_numpy()[wrong][0], ours["label"].to_numpy()[wrong][0]
        raise DataError(f"{where}: {int(wrong.sum())} label(s) disagree with the images given (e.g. {p}: "
                        f"{theirs.loc[p, 'label']} in the split, {here} here)")
    out = ours.drop(columns=[c for c in ("side", "fold", DEDUPE) if c in ours]).assign(
        group=theirs.loc[ours["path"], "group"].to_numpy(),
        **{c: theirs.loc[ours["path"], c].to_numpy() for c in extra})
    out = validate(out)
    check_no_leak(out)
    return out
