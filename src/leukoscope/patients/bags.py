"""Bags: each patient's cells, their frozen embeddings and the patient's label.

A bag holds every cell of a patient, typed by a technologist (signed) or not (unsigned): both carry
evidence about the patient, so both are used. Whole-field overviews never reach here (the cohort
reader keeps them apart). A byte copy of a cell the patient already has (DeepAPL's unsigned cells are
mostly copies of signed ones) is dropped, so no cell counts twice; unreadable files are skipped and
counted. Embeddings come from ``leukoscope.features.extract`` and its on-disk cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.data.cohort import subject_labels
from leukoscope.data.images import file_digest
from leukoscope.data.manifest import UNLABELLED, Manifest, skipped_files
from leukoscope.errors import DataError
from leukoscope.progress import SILENT, Progress

#: The frozen network that embeds each cell (``features.deep`` parameters): the cells' own resolution
#: (CellaVision crops are ~360 px; 352 is the nearest multiple of 32), so chromatin and granules are not
#: averaged away; no colour normalisation; the mean embedding of the cell and its mirror image.
#: cell-logodds, 5x5 nested patient CV on DeepAPL: 0.942 at 352 px, 0.919 at 224 px (0.896 there without
#: the mirror, 0.904 with all 8 D4 views).
DEFAULT_FEATURES: dict[str, Any] = {"backbone": "efficientnet_lite0", "input_size": 352, "views": 2}
Skipped = list[tuple[str, str]]


@dataclass
class Bags:
    """Cells of several patients, one row each, in patient order.

    ``cells`` columns: path, subject, cell_type (the technologist's type, "" when unsigned), sha1; ``X`` the
    cell embeddings (one row per cell); ``patient`` the index into ``subjects`` of each cell.
    """

    cells: pd.DataFrame
    X: np.ndarray
    subjects: np.ndarray
    y: np.ndarray
    classes: list[str]
    positive: str
    target: str
    features: dict[str, Any]
    type_names: list[str]
    skipped: Skipped = field(default_factory=list)

    @property
    def patient(self) -> np.ndarray:
        return self.cells["patient"].to_numpy()

    @property
    def types(self) -> np.ndarray:
        """Index into ``type_names`` of each cell's technologist type, -1 for an untyped cell."""
        return type_codes(self.cells["cell_type"], self.type_names)

    @property
    def negative(self) -> str:
        return next(c for c in self.classes if c != self.positive)

    def label_names(self) -> list[str]:
        return [self.positive if v else self.negative for v in self.y]

    def rows(self, patients: np.ndarray) -> np.ndarray:
        """Indices of the cells of the given patients (indices into ``subjects``)."""
        return np.flatnonzero(np.isin(self.patient, patients))

    def bag(self, p: int) -> np.ndarray:
        return np.flatnonzero(self.patient == p)

    def subset(self, patients: np.ndarray) -> Bags:
        """The bags of some patients only (renumbered), e.g. for a quick run."""
        patients = np.sort(np.asarray(patients))
        rows = self.rows(patients)
        cells = self.cells.iloc[rows].reset_index(drop=True)
        cells["patient"] = np.searchsorted(patients, cells["patient"].to_numpy())
        return Bags(cells, self.X[rows], self.subjects[patients], self.y[patients], self.classes,
                    self.positive, self.target, self.features, self.type_names, list(self.skipped))


def type_codes(names: pd.Series | list[str], vocabulary: list[str]) -> np.ndarray:
    """Index of each cell type name in ``vocabulary`` (-1: untyped, or a type the vocabulary lacks)."""
    index = {t: i for i, t in enumerate(vocabulary)}
    return np.array([index.get(str(t), -1) for t in names], int)


def patient_classes(labels: pd.Series, target: str, positive: str | None,
                    known: list[str] | None = None) -> tuple[list[str], str]:
    """The two classes of a patient-level column (sorted) and the positive one (default: the rarer).

    ``known``: the classes of a trained model; the column may then hold one or both of them.
    """
    counts = labels.astype(str).value_counts()
    if known is not None:
        other = sorted(set(counts.index) - set(known))
        if other:
            raise DataError(f"--target {target!r}: value(s) {', '.join(other)} are not classes of the "
                            f"model ({', '.join(known)})")
        return list(known), str(positive)
    classes = sorted(counts.index)
    if len(classes) != 2:
        found = ", ".join(f"{c} ({counts[c]})" for c in classes)
        raise DataError(f"--target {target!r}: patient-level training needs exactly two classes of patient, "
                        f"found {len(classes)}: {found}")
    if positive is None:  # the rarer class; on a tie, the later name
        return classes, min(reversed(classes), key=lambda c: counts[c])
    if positive not in classes:
        raise DataError(f"--positive {positive!r} is not a value of column {target!r} "
                        f"({', '.join(classes)})")
    return classes, positive


def shared_cells_warning(cells: pd.DataFrame) -> str | None:
    """A warning naming the patients that hold byte-identical cells (``cells``: ``sha1``, ``subject``): a
    patient CV may train on one copy and test on the other, so its figures would be optimistic."""
    owners = cells.groupby("sha1")["subject"].agg(lambda s: tuple(sorted(set(map(str, s)))))
    pairs = sorted({o for o in owners if len(o) > 1})
    if not pairs:
        return None
    files = int(sum(len(o) > 1 for o in owners))
    shown = ", ".join(" / ".join(p) for p in pairs[:3]) + (", ..." if len(pairs) > 3 else "")
    return (f"{files} cell file(s) are byte-identical in two or more patients ({shown}): the patient CV may "
            "train on one copy and test on the other, so its figures may be optimistic")


def dedupe(m: Manifest) -> tuple[Manifest, Skipped]:
    """Drop byte copies of a cell the same patient already has (typed cells kept first); adds ``sha1``."""
    order = m.assign(_unsigned=m["label"] == UNLABELLED).sort_values(["_unsigned"], kind="stable")
    first: dict[str, str] = {}
    keep: dict[int, str] = {}
    skipped = []
    for i, path, subject in zip(order.index, order["path"], order["subject"], strict=True):
        try:
            digest = file_digest(path)
        except OSError as e:
            skipped.append((str(path), f"cannot read file ({e.strerror or e})"))
            continue
        key = f"{subject}/{digest}"
        if key in first:
            skipped.append((str(path), f"byte copy of {first[key]}"))
            continue
        first[key] = str(path)
        keep[i] = digest
    rows = sorted(keep)
    return m.loc[rows].assign(sha1=[keep[i] for i in rows]), skipped


def embed(m: Manifest, features: dict[str, Any], cache: Path | None = None,
          progress: Progress = SILENT) -> tuple[pd.DataFrame, Skipped]:
    """Frozen embeddings of the cells of ``m`` through the feature cache (unreadable cells skipped)."""
    from leukoscope.features import extract

    return extract(m, "deep", cache, progress=progress, **features)


def load_bags(m: Manifest, target: str, positive: str | None = None,
              features: dict[str, Any] | None = None, cache: Path | None = None,
              progress: Progress = SILENT, classes: list[str] | None = None) -> Bags:
    """Every patient of ``m`` with a ``target`` value, as a bag of its embedded cells.

    ``classes`` (with ``positive``): score against a trained model's classes instead of finding them.
    """
    labels = subject_labels(m, target)
    classes, positive = patient_classes(labels, target, positive, classes)
    features = {**DEFAULT_FEATURES, **(features or {})}
    cells = m[m["subject"].isin(labels.index)].reset_index(drop=True)
    cells, skipped = dedupe(cells)
    skipped = skipped_files(m) + skipped  # what the reader left out: not cells, unlisted folders
    emb, bad = embed(cells, features, cache, progress)
    skipped += bad
    cells = cells.loc[emb.index]
    if cells.empty:
        raise DataError(f"--target {target!r}: no readable cell in any patient folder")
    subjects = np.array(sorted(cells["subject"].unique()), dtype=object)
    frame = pd.DataFrame({"path": cells["path"].astype(str).to_numpy(),
                          "subject": cells["subject"].to_numpy(),
                          "cell_type": cells["label"].astype(str).to_numpy(),
                          "sha1": cells["sha1"].to_numpy(),
                          "patient": np.searchsorted(subjects, cells["subject"].to_numpy())})
    order = np.argsort(frame["patient"].to_numpy(), kind="stable")
    y = (labels.loc[subjects].astype(str).to_numpy() == positive).astype(int)
    skipped += [(str(s), "patient without a readable cell")
                for s in sorted(set(labels.index) - set(subjects))]
    types = sorted(set(frame["cell_type"]) - {UNLABELLED})
    return Bags(frame.iloc[order].reset_index(drop=True), emb.to_numpy(np.float64)[order], subjects, y,
                classes, positive, str(labels.name or target), features, types, skipped)
