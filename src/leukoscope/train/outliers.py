"""``train --outliers``: examples of cells a model must not call, for the ``exposure`` unfamiliarity score.

A model of normal cells never saw a blast, and its distance-based score cannot tell another lab's blasts
from that lab's normal cells (PBC model, DeepAPL: AUC 0.72). Shown blasts from any lab, a linear direction
in its embedding separates them much better (``models.unfamiliar.fit_exposure``). The outliers are a data
set leukoscope reads; with ``--outlier-class`` only that class of it is what to flag, and its other cells
are familiar kinds from the outliers' lab, which teach the score that a lab's stain is no reason to flag.

The outlier set gets its own train / val / test sides (whole groups, ``SIDES``): the regression learns on
train, its regularisation is chosen on val, and the bundle's metrics say how many held-out (test) outliers
it flags (``figures``). Both families read and decode (or featurise) the outliers before training, so an
unusable set is refused at once (``usable``); the run directory keeps the cells used and their sides
(``outliers.csv``, written when the run finishes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.audit.groups import grouped
from leukoscope.data.images import iter_image_files, readable_digest, real_path
from leukoscope.data.manifest import Manifest, make_manifest, skipped_files, with_skipped
from leukoscope.data.readers import detect_layout, read
from leukoscope.data.splits import read_split
from leukoscope.errors import ConfigError, DataError
from leukoscope.io import write_csv_atomic
from leukoscope.train.config import TrainConfig

#: Shares of the outlier set's groups on each side.
SIDES = {"train": 0.6, "val": 0.2, "test": 0.2}
#: Fewest outlier cells: at least one on each side, and a few to learn from.
MIN_OUTLIERS = 10
OUTLIER, FAMILIAR = "outlier", "familiar"
#: The run directory's record of the outlier cells it used: path, label (outlier / familiar), side.
RECORD = "outliers.csv"
#: Why an outlier cell whose classical features are not all finite is not used.
UNMEASURABLE = "its features cannot be measured (a grey or blank image?): not used as an outlier"


def run_outliers(config: TrainConfig, training: Manifest) -> Manifest | None:
    """``read_outliers`` of a run's ``--outliers`` (None without), its settings checked first."""
    cfg = config.resolved()
    if cfg.outliers is None:
        return None
    if cfg.split is not None:  # known now, not once a model has been fitted
        split = read_split(Path(cfg.split))
        if "side" in split and not (split["side"] == "val").any():
            raise ConfigError(f"--split {cfg.split} has no validation side, which --outliers sets the "
                              "score's threshold on")
    return read_outliers(cfg.outliers, cfg.outlier_class, training, cfg.seed)


def read_outliers(path: str, cls: str | None, training: Manifest, seed: int) -> Manifest:
    """The outlier set's cells, ``label`` ``outlier`` or ``familiar`` (its other labelled cells when ``cls``
    is given), with a ``side``; what its reader left out is in ``skipped_files``. A folder in a layout
    leukoscope reads keeps its groups (patients) and leaves out what is not a cell; any other folder gives
    every image in it. Refused: a class the set does not have, too few outliers or groups to fill the sides
    (``check``), and cells that are also training cells (a cell cannot be both)."""
    where = f"--outliers {path}"
    m = _load(Path(path), where)
    left_out = skipped_files(m)
    if cls is not None:
        m = m[(m["source_split"] != "unlabelled") & (m["label"].astype(str) != "")]
        labels = sorted(set(m["label"].astype(str)))
        if cls not in labels:
            raise ConfigError(f"--outlier-class {cls!r} is not a class of {path} "
                              f"({'; '.join(map(repr, labels)) or 'it has no labelled cells'})")
        m = m.assign(label=np.where(m["label"].astype(str) == cls, OUTLIER, FAMILIAR))
    else:
        m = m.assign(label=OUTLIER)
    m = m.assign(source_split="train").reset_index(drop=True)  # every row now has its role as its label
    both = set(map(real_path, m["path"])) & set(map(real_path, training["path"]))
    if both:
        raise ConfigError(f"{where}: {len(both)} cell(s) are also training cells (e.g. {sorted(both)[0]}); "
                          "a cell cannot be both")
    ours, theirs = _digests(m["path"]), _digests(training["path"])
    if copies := sorted((ours[d], theirs[d]) for d in ours.keys() & theirs.keys()):
        raise ConfigError(f"{where}: {len(copies)} cell(s) are byte-identical copies of training cells (e.g. "
                          f"{copies[0][0]}, a copy of {copies[0][1]}); a cell cannot be both")
    # the audit's duplicate clusters joined into one group, as the training split does: a copy of a held-out
    # outlier is not learnt
    return with_skipped(check(_sided(grouped(m, True), seed), where, cls), left_out)


def usable(m: Manifest, kept: np.ndarray, where: str, cls: str | None) -> Manifest:
    """The rows of ``m`` that ``kept`` marks (those that decoded, or whose features are finite), checked
    again: an unreadable outlier set is refused before any training, not after."""
    return check(m[kept].reset_index(drop=True), where, cls)


def check(m: Manifest, where: str, cls: str | None) -> Manifest:
    """``m`` when it has at least ``MIN_OUTLIERS`` outliers and some on every side, else a ConfigError
    saying how many there are, in how many groups, side by side."""
    bad = m[m["label"] == OUTLIER]
    per_side = {s: int((bad["side"] == s).sum()) for s in SIDES}
    if len(bad) >= MIN_OUTLIERS and all(per_side.values()):
        return m
    what = f"of class {cls!r} " if cls is not None else ""
    sides = ", ".join(f"{n} {s}" for s, n in per_side.items())
    groups = bad["group"].nunique()
    raise ConfigError(f"{where}: {len(bad)} usable outlier cell(s) {what}in {groups} group(s) "
                      f"({sides}); at least {MIN_OUTLIERS}, and enough groups (patients) for some on the "
                      "train, validation and test sides, are needed")


def _digests(paths: pd.Series) -> dict[str, str]:
    """Each readable file's content digest -> its path (an unreadable one is skipped when decoded)."""
    return {d: p for p in paths if (d := readable_digest(p)) is not None}


def write_record(out: Path, m: Manifest) -> None:
    """``out / RECORD``: the outlier cells a finished run used, and their sides."""
    write_csv_atomic(Path(out) / RECORD, m[["path", "label", "side"]])


def _load(path: Path, where: str) -> Manifest:
    """``path`` read by the reader of its layout, or, for a folder of no known layout, every image in it
    (each its own group)."""
    try:
        if path.is_dir() and any(path.iterdir()):
            try:
                detect_layout(path)
            except DataError:  # no layout: a plain folder of images
                files = iter_image_files(path.absolute())
                return make_manifest({"path": str(p), "label": OUTLIER} for p in files)
        return read([path])
    except (DataError, ConfigError) as e:
        why = str(e).removeprefix(f"{path}: ").removesuffix(" (see --layout)")
        raise ConfigError(f"{where}: {why}") from None


def _sided(m: Manifest, seed: int) -> Manifest:
    """Whole groups (patients) spread over ``SIDES`` in a seeded order, those holding outliers and the others
    each in those shares: a patient's cells are all on one side, and every side gets outliers."""
    rng = np.random.default_rng(seed)
    holds = (m["label"] == OUTLIER).groupby(m["group"]).any()
    side: dict[str, str] = {}
    for stratum in (True, False):
        groups = rng.permutation(sorted(holds.index[holds == stratum]))
        cut = np.cumsum([round(len(groups) * SIDES[s]) for s in ("val", "test")])
        side |= dict.fromkeys(groups[:cut[0]], "val") | dict.fromkeys(groups[cut[0]:cut[1]], "test")
    return m.assign(side=[side.get(g, "train") for g in m["group"]])


def by_side(m: Manifest, emb: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Embeddings (rows of ``m``'s order) of the outliers and of the familiar cells, by side."""
    def part(label: str) -> dict[str, np.ndarray]:
        return {s: emb[((m["label"] == label) & (m["side"] == s)).to_numpy()] for s in SIDES}

    return part(OUTLIER), part(FAMILIAR)


Scored = tuple[np.ndarray, np.ndarray]  # embeddings and logits of some cells


def figures(scorer: Any, held: Scored, others: Scored, test: Scored, source: tuple[str, str | None],
            m: Manifest) -> dict[str, Any]:
    """metrics.json's ``outliers``: where they came from (``source``: path, class), how many per side, and
    on the held-out sides (embeddings and logits of ``held``: the test outliers, ``others``: the outlier
    set's other test cells, ``test``: the run's test cells) the share of each flagged, and the ROC AUC of
    the outliers against the run's test cells. The others' share says whether the score learnt the
    outliers or their lab: a high one is the lab."""
    from sklearn.metrics import roc_auc_score

    bad, good = scorer.score(*held), scorer.score(*test)
    both = np.r_[bad, good]
    out: dict[str, Any] = {
        "source": source[0], "class": source[1], "method": scorer.method, "C": scorer.exposure.get("C"),
        "cells": {role: {s: int(((m["label"] == role) & (m["side"] == s)).sum()) for s in SIDES}
                  for role in (OUTLIER, FAMILIAR)},
        "test_outliers_flagged": float(scorer.flag(bad).mean()) if len(bad) else None,
        "test_cells_flagged": float(scorer.flag(good).mean()) if len(good) else None,
        "test_others_flagged": float(scorer.flag(scorer.score(*others)).mean()) if len(others[0]) else None}
    if len(bad) and len(good) and np.isfinite(both).all():
        out["test_auc"] = float(roc_auc_score(np.r_[np.ones(len(bad)), np.zeros(len(good))], both))
    return out
