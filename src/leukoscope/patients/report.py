"""Patient reports: what a ``patient`` bundle says about each patient, in a form a person can check.

Per patient: the call and its calibrated probability with a 95% interval, the threshold, the cells used
and those skipped (with why), a warning when too few cells were given for a call, the predicted cell-type
composition with exact (Clopper-Pearson) 95% intervals, the cells that drove the call as a gallery, and
the cells unlike the training cohort's (the bundle's unfamiliarity score; left out of the call, counted and
said in words: ``PatientCall.unfamiliar_note``).
``report_patients`` writes ``report.html`` (self-contained: every image a data URI), ``patients.csv``
(one row per patient) and ``patients.json`` (``PatientCall.to_dict`` per patient, plus the composition).

A patient is a folder of that patient's cells, read recursively; its name is the subject id. Whole-field
overviews (a side of ``OVERVIEW_MIN_SIDE`` px or more) and files that are not images are skipped and
counted, never called cells. A folder with no cell is a counted skip, not an error, unless no patient at
all can be reported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from leukoscope.bundle import Bundle
from leukoscope.bundle.patient import PatientBundle
from leukoscope.bundle.patient_call import PatientCall
from leukoscope.data.cohort import (
    DEEPAPL_CELLS,
    SubjectTable,
    deepapl_table,
    load_subjects,
    patient_folders,
    read_header,
    walk,
)
from leukoscope.data.images import is_image_file
from leukoscope.errors import BundleError, DataError, ImageError
from leukoscope.io import write_csv_atomic, write_json_atomic
from leukoscope.progress import SILENT, Progress

REPORT_FILE = "report.html"
CSV_FILE = "patients.csv"
JSON_FILE = "patients.json"
CONFIDENCE = 0.95
COMPOSITION_METHOD = "Clopper-Pearson exact binomial, 95%"
#: Cells shown in a patient's gallery of the cells that drove the call.
DRIVERS = 8
Skipped = list[tuple[str, str]]


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact binomial interval on the share ``k / n``.

    Exact because a patient gives tens of cells, not thousands: the normal (Wald) interval would say
    0-0 % for 0 blasts in 12 cells, where up to 26 % is consistent with what was seen.
    """
    from scipy.stats import beta

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    tail = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


@dataclass
class TypeShare:
    """One cell type among a patient's cells: count, share and its exact 95% interval."""

    cell_type: str
    count: int
    share: float
    low: float
    high: float


def composition(call: PatientCall, cell_types: Sequence[str]) -> list[TypeShare]:
    """Every cell type the bundle knows, most frequent first, each with its share of the cells used.

    Types with no cell stay in: 0 of 12 cells is still a bound (at most 26 %). Empty when no cell was used.
    """
    n = call.cells_used
    if n == 0:
        return []
    counts = call.composition()
    names = list(counts) + sorted(set(cell_types) - set(counts))
    return [TypeShare(t, counts.get(t, 0), counts.get(t, 0) / n, *clopper_pearson(counts.get(t, 0), n))
            for t in names]


def percent(p: float | None) -> str:
    """A probability as a percentage for people: never "100 %" or "0 %", which no model can know."""
    if p is None or math.isnan(p):
        return "-"
    if p >= 0.999:
        return "> 99.9 %"
    if p <= 0.001:
        return "< 0.1 %"
    return f"{100 * p:.1f} %"


@dataclass
class PatientFolder:
    """One patient's folder(s): their cell images and the files in them that are not cells."""

    subject: str
    folders: list[Path]
    cells: list[Path]
    skipped: Skipped = field(default_factory=list)

    @property
    def where(self) -> str:
        """The folder, or the folders joined by "; " for a patient filed at several sites."""
        return "; ".join(str(f) for f in self.folders)

    def why_empty(self) -> str:
        """Why a patient without cells gives no report, naming what their folders did hold."""
        overviews = sum(r.startswith("overview") for _, r in self.skipped)
        if not self.skipped:
            return "no image in the folder"
        return (f"no cell image ({overviews} whole-field overview(s), "
                f"{len(self.skipped) - overviews} other skipped file(s))")


def scan_patient(*folders: Path | str, subject: str | None = None) -> PatientFolder:
    """The cell images under each of ``folders`` (recursively, sorted), pooled as one patient named
    ``subject`` (default: the first folder's name); overviews and non-images skipped."""
    cells: list[Path] = []
    skipped: Skipped = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder (give one folder of cell images per patient)")
        _scan_into(folder, cells, skipped)
    # the name as given (a link's, not its target's: the folder's name is the patient id); abspath only
    # so that "." names the folder it stands for
    name = subject if subject is not None else Path(os.path.abspath(folders[0])).name
    return PatientFolder(name, [Path(f) for f in folders], cells, skipped)


def _scan_into(folder: Path, cells: list[Path], skipped: Skipped) -> None:
    """The cohort scan's walk (``data.cohort.walk``: linked folders followed, each real folder once)."""
    for where, _, _, files in walk(folder):
        for name in files:
            f = where / name
            if not is_image_file(f):
                skipped.append((str(f), "not an image"))
                continue
            head = read_header(f, skipped)
            if head is not None and head.overview:
                skipped.append((str(f), f"overview image {head.width}x{head.height} (a whole field, "
                                        "not one cell)"))
            elif head is not None:
                cells.append(f)


def cohort_folders(root: Path | str, subjects: SubjectTable | None = None
                   ) -> tuple[list[tuple[str, list[Path]]], Skipped]:
    """The patients of a cohort, in table order, each with their folder(s), found by ``scan_cohort``'s rule
    (the shallowest level of folders named by ids, however deep; a patient filed at two sites has two): of
    the patients of ``subjects`` under ``root``, or of a cohort as DeepAPL publishes it (``master.csv``
    beside ``All/``); a patient of the table without a folder, and a folder the table does not list, are
    returned as skips."""
    root = Path(root)
    if subjects is None:
        table = deepapl_table(root) if root.is_dir() else None
        if table is None:
            raise DataError(f"{root}: not a cohort folder (--cohort needs master.csv beside an All folder, "
                            f"or --subjects FILE)")
        subjects, cells = load_subjects(table), table.parent / DEEPAPL_CELLS
    else:
        cells = root
    found, unlisted = patient_folders(cells, subjects)
    ids = [str(i) for i in subjects.table.index]
    missing = [(str(cells / i), f"patient {i} of {subjects.path} has no folder") for i in ids
               if i not in found]
    missing += [(str(f), f"folder not in the patients table {subjects.path.name}") for f in unlisted]
    return [(i, found[i]) for i in ids if i in found], missing


def _is_cohort(folder: Path) -> bool:
    """A DeepAPL-layout cohort, or its ``All`` folder of patient folders (master.csv beside it)."""
    if not folder.is_dir():
        return False
    table = deepapl_table(folder) or deepapl_table(folder.resolve().parent)
    return table is not None and folder.resolve() in (table.parent.resolve(), table.parent.parent.resolve(),
                                                      (table.parent / DEEPAPL_CELLS).resolve())


@dataclass
class PatientReport:
    """A reported patient: the bundle's call, the folder(s) it came from ("; "-joined) and its composition."""

    folder: str
    call: PatientCall
    composition: list[TypeShare]

    @property
    def subject(self) -> str:
        return str(self.call.subject)

    def uncertain(self) -> bool:
        """Whether the 95% interval straddles the threshold: other cells could change the call."""
        low, high = self.call.interval
        return self.call.call is not None and low < self.call.threshold <= high

    def to_dict(self) -> dict[str, Any]:
        return {**self.call.to_dict(), "folder": self.folder, "uncertain": self.uncertain(),
                "composition_ci95": [asdict(s) for s in self.composition],
                "composition_method": COMPOSITION_METHOD}


@dataclass
class ReportResult:
    out: Path
    patients: list[PatientReport]
    #: (folder, reason) of each folder given that gave no report
    not_reported: Skipped

    @property
    def files(self) -> list[Path]:
        return [self.out / REPORT_FILE, self.out / CSV_FILE, self.out / JSON_FILE]


def patient_bundle(bundle: Bundle) -> PatientBundle:
    """``bundle`` itself when it makes patient calls, else one line saying what to use instead."""
    if not isinstance(bundle, PatientBundle):
        raise BundleError(f"{bundle.path}: a {bundle.family} bundle answers per cell; a patient report "
                          "needs a patient bundle (leukoscope train COHORT --target COLUMN)")
    return bundle


def report_patients(bundle: Bundle, folders: Sequence[Path | str], out: Path | str, *,
                    cohort: bool = False, subjects: SubjectTable | None = None, drivers: int = DRIVERS,
                    progress: Progress = SILENT) -> ReportResult:
    """Call every patient folder (``cohort``: every patient of each cohort root, the patients of
    ``subjects`` where given) and write the report.

    Raises ``DataError`` naming every folder when none gives a patient to report.
    """
    b = patient_bundle(bundle)
    not_reported: Skipped = []
    patients: list[tuple[str | None, list[Path]]] = []  # (id where a cohort names it, its folders)
    for f in folders:
        if cohort:
            found, missing = cohort_folders(Path(f), subjects)
            patients += found
            not_reported += missing
        elif _is_cohort(Path(f)):
            raise DataError(f"{f}: a cohort of many patients (master.csv beside All), not one patient's "
                            "folder: add --cohort for a call per patient")
        else:
            patients.append((None, [Path(f)]))
    scans: list[PatientFolder] = []
    seen: set[Path] = set()
    for subject, paths in patients:  # every folder checked (headers only) before any is called
        fresh = []
        for path in paths:
            if path.resolve() in seen:
                not_reported.append((str(path), "the same folder given twice (reported once)"))
            else:
                seen.add(path.resolve())
                fresh.append(path)
        if not fresh:
            continue
        scan = scan_patient(*fresh, subject=subject)
        if scan.cells:
            scans.append(scan)
        else:
            not_reported.append((scan.where, scan.why_empty()))
    reports: list[PatientReport] = []
    advance = progress.task("calling patients", len(scans))
    for scan in scans:
        call = b.diagnose([str(c) for c in scan.cells], subject=scan.subject)
        call.skipped = scan.skipped + call.skipped
        if call.cells:  # a patient whose every cell is unfamiliar is reported too, without a call
            reports.append(PatientReport(scan.where, call, composition(call, b.cell_types)))
        else:
            not_reported.append((scan.where,
                                 f"none of its {len(scan.cells)} cell image(s) could be read"))
        advance(1)
    progress.done("calling patients")
    if not reports:
        reasons = "; ".join(f"{f}: {r}" for f, r in not_reported) or "no folder given"
        raise DataError(f"no patient could be reported from {len(folders)} folder(s) given: {reasons}")
    result = ReportResult(Path(out), reports, not_reported)
    result.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result.out / JSON_FILE, {
        "bundle": str(b.path), "model": b.config.get("model"), "target": b.config.get("target"),
        "positive": b.positive, "patients": [r.to_dict() for r in reports],
        "not_reported": [{"folder": f, "reason": r} for f, r in not_reported]})
    write_csv_atomic(result.out / CSV_FILE, patients_table(reports, b.positive, b.cell_types))
    write_html(result, b, drivers)
    return result


def patients_table(reports: Sequence[PatientReport], positive: str,
                   cell_types: Sequence[str]) -> pd.DataFrame:
    """One row per patient: call, probability and interval, cells, then count and share of each type."""
    rows = []
    for r in reports:
        c = r.call
        row: dict[str, Any] = {
            "subject": r.subject, "folder": r.folder, "call": c.call or "",
            f"p_{positive}": round(c.probability, 6),
            "p_ci95_low": round(c.interval[0], 6), "p_ci95_high": round(c.interval[1], 6),
            "threshold": round(c.threshold, 6), "cells_used": c.cells_used, "cells_skipped": len(c.skipped),
            "too_few": c.too_few, "min_cells": c.min_cells, "uncertain": r.uncertain(),
            "cells_unfamiliar": c.cells_unfamiliar if c.unfamiliar_checked else None,
            "unfamiliar_share": round(c.unfamiliar_share, 6) if c.unfamiliar_checked else None,
            "unfamiliar_note": c.unfamiliar_note() or ""}
        shares = {s.cell_type: s for s in r.composition}
        for t in cell_types:  # no share at all when no cell was used (every cell unfamiliar)
            s = shares.get(t)
            row |= {f"n_{t}": s.count if s else 0, f"share_{t}": round(s.share, 6) if s else None,
                    f"share_{t}_ci95_low": round(s.low, 6) if s else None,
                    f"share_{t}_ci95_high": round(s.high, 6) if s else None}
        rows.append(row)
    return pd.DataFrame(rows)


def _gallery(call: PatientCall, n: int) -> list[dict[str, Any]]:
    """The ``n`` driver cells as thumbnails with what each contributed; a file gone since is left out."""
    from leukoscope.data.images import load_rgb
    from leukoscope.reports.html import image_to_data_uri

    out = []
    for c in call.drivers(n):
        try:
            uri = image_to_data_uri(load_rgb(c.path), max_side=128)
        except (ImageError, OSError):
            continue
        out.append({"uri": uri, "name": Path(c.path).name, "cell": c})
    return out


def write_html(result: ReportResult, bundle: PatientBundle, drivers: int = DRIVERS) -> Path:
    """The self-contained HTML report: an index across patients, then one section per patient."""
    from leukoscope import __version__
    from leukoscope.reports.html import write_report

    negative = next(c for c in bundle.classes if c != bundle.positive)
    return write_report(
        result.out / REPORT_FILE, "patient_report.html",
        title=f"Patient report: {bundle.config.get('target', 'diagnosis')}",
        protocol=bundle.config.get("protocol"), patients=result.patients, not_reported=result.not_reported,
        galleries=[_gallery(r.call, drivers) for r in result.patients], model=bundle.config.get("model"),
        bundle=str(bundle.path), positive=bundle.positive, negative=negative, pct=percent,
        composition_method=COMPOSITION_METHOD, version=__version__)
