"""What is in a data set: counts per class, subject and source split, image sizes, bad files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leukoscope.data.cohort import Cohort
from leukoscope.data.images import probe
from leukoscope.data.manifest import Manifest, is_synthetic, labelled, protocol, skipped_files, warnings_for
from leukoscope.errors import ImageError
from leukoscope.progress import SILENT, Progress


def _subjects(part: Manifest) -> list[str]:
    return sorted(part["subject"].dropna().unique(), key=lambda s: (len(s), s))


def describe(m: Manifest, cohorts: Sequence[Cohort] = (), *, progress: Progress = SILENT) -> dict[str, Any]:
    """A JSON-ready summary of a manifest; every image is decoded once to find bad files.

    ``cohorts`` (from ``read_with_cohorts``) adds a ``cohort`` entry: what the cells alone cannot say.
    ``unreadable`` lists the files the readers left out too (``skipped_files``: names not in UTF-8).
    """
    advance = progress.task("decoding", len(m))
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    unreadable = [{"path": p, "reason": r} for p, r in skipped_files(m)]
    for p in m["path"]:
        try:
            w, h, mode = probe(p)
            sizes[f"{w}x{h}"] += 1
            modes[mode] += 1
        except ImageError as e:
            unreadable.append({"path": p, "reason": str(e).removeprefix(f"{p}: ")})
        advance(1)
    progress.done("decoding")
    splits: dict[str, Any] = {}
    for split_name, part in m.groupby("source_split", sort=True):
        per_class = {}
        for label, rows in part.groupby("label", sort=True):
            subj = _subjects(rows)
            per_class[label or "(unlabelled)"] = {
                "images": int(len(rows)), "subjects": len(subj), "subject_ids": subj,
            }
        entry: dict[str, Any] = {"images": int(len(part)), "classes": per_class}
        if "original_name" in part:
            renamed = part[part["original_name"].notna()
                           & (part["original_name"] != part["path"].map(lambda p: Path(p).name))]
            if len(renamed):
                entry["original_names"] = {Path(p).name: o for p, o in
                                           zip(renamed["path"], renamed["original_name"],
                                               strict=True)}
        splits[str(split_name)] = entry
    out: dict[str, Any] = {
        "datasets": sorted(set(m.get("dataset", []))),
        "layouts": sorted(set(m.get("layout", []))),
        "images": int(len(m)),
        "protocol": protocol(m),
        "subjects": int(m["subject"].nunique()),
        "source_splits": splits,
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "unreadable": unreadable,
        "synthetic": is_synthetic(m),
    }
    if cohorts:
        out["cohort"] = describe_cohorts(cohorts)
    warning = warnings_for(m)
    if warning:
        out["warning"] = warning
    return out


def describe_cohorts(cohorts: Sequence[Cohort]) -> dict[str, Any]:
    """Patients per diagnosis, cells per patient and per type, unlabelled cells, overviews, skips."""
    cells = pd.concat([c.cells for c in cohorts], ignore_index=True)
    per_patient = cells.groupby("subject").size()
    diagnoses: Counter[str] = Counter()
    for c in cohorts:
        first = c.cells.drop_duplicates("subject")[c.subjects.diagnosis]
        diagnoses.update(str(d) if pd.notna(d) else "(blank)" for d in first)
    typed = labelled(cells)
    overviews = pd.concat([c.overviews for c in cohorts], ignore_index=True)
    skipped = [{"path": p, "reason": r} for c in cohorts for p, r in c.skipped]
    return {
        "subjects_files": sorted({str(c.subjects.path.resolve()) for c in cohorts}),
        "diagnosis_column": ", ".join(sorted({c.subjects.diagnosis for c in cohorts})),
        "patients": int(per_patient.size),
        "patients_per_diagnosis": dict(sorted(diagnoses.items())),
        "cells_per_patient": {"min": int(per_patient.min()), "median": float(per_patient.median()),
                              "max": int(per_patient.max())},
        "typed_cells": int(len(typed)),
        "cell_types": int(typed["label"].nunique()),
        "cells_per_type": {str(k): int(v) for k, v in typed["label"].value_counts().sort_index().items()},
        "unlabelled_cells": int(len(cells) - len(typed)),
        "overview_images": int(len(overviews)),
        "overviews": [{"path": r.path, "subject": r.subject, "size": f"{r.width}x{r.height}"}
                      for r in overviews.itertuples()],
        "skipped_files": len(skipped),
        "skipped": skipped,
        "unlisted_folders": {k: v for c in cohorts for k, v in c.unlisted_folders.items()},
        "patients_without_cells": sorted({p for c in cohorts for p in c.patients_without_cells}),
    }

