"""Patient cohorts: cells filed in one folder per patient, plus a table of patient-level columns.

The rule (the README's "Your own patient cohort" says the same to users):

- the **subjects table** is a CSV with one row per patient, keyed by a patient-id column (its first
  column unless named); its other columns (diagnosis, age, ...) are attached to every cell of that
  patient under snake_case names (``Age at Diagnosis`` -> ``age_at_diagnosis``);
- the **patient folder** is the shallowest folder level whose names are ids of that table; every folder at
  that level that the table does not list is skipped and counted, as is a table row with no cells;
- below a patient folder, a cell's **label** is the name of the folder that holds it, so extra levels
  between (an accession number, a date, ``Signed slides``) change nothing; a cell directly in the patient
  folder or in a folder named ``Unsigned slides`` / ``unlabelled`` / ``unlabeled`` is an **unlabelled** cell
  of its patient (usable for patient-level prediction, never for cell-level scoring);
- an image with a side of ``OVERVIEW_MIN_SIDE`` pixels or more is a whole-field **overview**, listed apart
  and never a cell; files that are not images (``Thumbs.db``) or whose header cannot be read are skipped
  and counted.

DeepAPL as published (``Data/master.csv`` + ``Data/All/Patient_XX/...``) follows this rule and is found
without options; any other cohort names its table with ``--subjects FILE``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from leukoscope.data.images import file_digest, image_size, is_image_file, real_path, walk_folders
from leukoscope.data.manifest import COLUMNS, UNLABELLED, Manifest, make_manifest, skipped_files, with_skipped
from leukoscope.errors import DataError, ImageError

#: CellaVision cell crops are 360-480 px a side and its whole-field overviews ~2,900 px; a single white
#: cell at any usual magnification fits well inside 1,500 px, so a longer side means a field of many cells.
OVERVIEW_MIN_SIDE = 1500
#: Folders whose cells carry no verified type (compared case-insensitively).
UNLABELLED_FOLDERS = frozenset({"unsigned slides", "unlabelled", "unlabeled"})
#: DeepAPL as published: ``Data/master.csv`` beside ``Data/All/<patient folders>``.
DEEPAPL_TABLE = "master.csv"
DEEPAPL_CELLS = "All"
#: The column that patient-level summaries count by unless told otherwise.
DEFAULT_DIAGNOSIS = "diagnosis"
#: Manifest columns a subjects-table column may not overwrite.
_RESERVED = frozenset(COLUMNS) | {"dataset", "layout", "synthetic", "subjects_file"}

class Header(NamedTuple):
    """An image's size as its header gives it (no pixels decoded)."""

    width: int
    height: int

    @property
    def overview(self) -> bool:
        """A whole field of view (many cells), not one cell: listed apart, never scored as a cell."""
        return max(self.width, self.height) >= OVERVIEW_MIN_SIDE


def read_header(f: Path, skipped: list[tuple[str, str]]) -> Header | None:
    """``f``'s header (``overview`` or a cell), or None once ``f`` is listed in ``skipped`` with why its
    header cannot be read: the one rule by which the cohort scan and the patient report sort image files."""
    try:
        return Header(*image_size(f))
    except ImageError as e:
        skipped.append((str(f), str(e).removeprefix(f"{f}: ")))
        return None


def snake_case(name: str) -> str:
    """``Age at Diagnosis`` -> ``age_at_diagnosis``: one spelling for columns from any spreadsheet."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def _preview(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _no_column(path: Path, column: str, columns: Sequence[str], hint: str = "") -> DataError:
    return DataError(f"{path}: no column {column!r} (columns: {', '.join(columns)}){hint}")


@dataclass(frozen=True)
class SubjectTable:
    """One row per patient, indexed by patient id, columns in snake_case."""

    path: Path
    table: pd.DataFrame
    diagnosis: str


def load_subjects(path: Path, id_column: str | None = None,
                  diagnosis: str = DEFAULT_DIAGNOSIS) -> SubjectTable:
    """Read a subjects CSV; bad shape (missing column, blank or duplicate id) is one error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: subjects table not found")
    try:
        # utf-8-sig: spreadsheets save a byte-order mark that would otherwise rename the first column
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    given = [str(c).strip() for c in raw.columns]
    names = [snake_case(c) for c in given]
    if len(set(names)) < len(names) or "" in names:
        bad = [c for c, n in zip(given, names, strict=True) if names.count(n) > 1 or not n]
        raise DataError(f"{path}: column names {bad} are empty or the same once written in snake_case")
    raw.columns = names
    id_col = snake_case(id_column) if id_column is not None else names[0]
    if id_col not in names:
        raise _no_column(path, str(id_column), given, " for the patient id")
    id_name = given[names.index(id_col)]
    target = snake_case(diagnosis)
    if target == id_col:
        raise DataError(f"{path}: column {id_name!r} holds the patient id; it cannot be the diagnosis too")
    if target not in names:
        raise _no_column(path, diagnosis, given, "; name the patient-level label with --diagnosis")
    clash = sorted((set(names) - {id_col}) & _RESERVED)
    if clash:
        raise DataError(f"{path}: column(s) {clash} would overwrite the manifest's own; rename them")
    ids = raw[id_col].str.strip()
    if (ids == "").any():
        raise DataError(f"{path}: {int((ids == '').sum())} row(s) have no patient id in column {id_name!r}")
    dup = ids[ids.duplicated()]
    if len(dup):
        first = dup.iloc[0]
        raise DataError(f"{path}: patient id {first!r} appears {int((ids == first).sum())} times "
                        f"in column {id_name!r}")
    table = raw.drop(columns=id_col).apply(_typed)
    table.index = pd.Index(ids, name="subject")
    return SubjectTable(path, table, target)


def _typed(col: pd.Series) -> pd.Series:
    """Stripped text, blanks missing, and numbers as numbers where every filled value is one (ages);
    whole numbers stay whole beside a blank (a 0/1 diagnosis is "1", not "1.0", as a class name)."""
    text = col.str.strip()
    text = text.mask(text == "")
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().sum() != text.notna().sum() or not text.notna().any():
        return text
    whole = numbers.dropna()
    return numbers.astype("Int64") if (whole == whole.round()).all() else numbers


def deepapl_table(root: Path) -> Path | None:
    """``master.csv`` of DeepAPL as published, from the data set folder or its ``Data`` folder."""
    for data in (root / "Data", root):
        if (data / DEEPAPL_TABLE).is_file() and (data / DEEPAPL_CELLS).is_dir():
            return data / DEEPAPL_TABLE
    return None


def is_deepapl(path: Path) -> bool:
    """Layout detector: a folder holding DeepAPL's ``master.csv`` beside its ``All`` folder."""
    return path.is_dir() and deepapl_table(path) is not None


@dataclass
class Cohort:
    """What a cohort folder holds: cells (the manifest) and what is kept apart from them."""

    root: Path
    subjects: SubjectTable
    cells: Manifest
    #: whole-field images: path, subject, width, height
    overviews: pd.DataFrame
    #: (path, reason) of files that are neither cells nor overviews
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: folders at the patient level that the table does not list -> files in them
    unlisted_folders: dict[str, int] = field(default_factory=dict)
    #: table ids with no cell (no folder, an empty one, or overviews only)
    patients_without_cells: list[str] = field(default_factory=list)


def walk(root: Path) -> list[tuple[Path, tuple[str, ...], list[str], list[str]]]:
    """Every folder under ``root`` (hidden ones left out): path, parts below root, sub-folders, files.

    Symlinked folders are followed (``images.walk_folders``: a cohort assembled from links to patient
    folders is still a cohort), each real folder once.
    """
    out = []
    for dirpath, dirs, files in walk_folders(root, hidden=False):
        where = Path(dirpath)
        out.append((where, where.relative_to(root).parts, list(dirs), files))
    return out


def _patient_level(folders: Sequence[tuple[Path, tuple[str, ...], list[str], list[str]]],
                   ids: set[str]) -> int | None:
    """Depth below the root of the shallowest folder level that holds a folder named by a patient id."""
    depths = [len(parts) + 1 for _, parts, dirs, _ in folders if ids & set(dirs)]
    return min(depths) if depths else None


def patient_folders(root: Path | str, subjects: SubjectTable) -> tuple[dict[str, list[Path]], list[Path]]:
    """Each listed patient's folder(s) under ``root`` (as spelled, links not resolved: the folder's name is
    the id), found by the module's rule, so the patient report finds the same patients as ``scan_cohort``;
    and the folders at that level, holding files, that the table does not list.

    Several folders for one id are possible (``siteA/P01`` and ``siteB/P01``); ``scan_cohort`` pools them.
    A patient without a folder is absent; none found at all gives an empty dict.
    """
    root = Path(root)
    ids = set(subjects.table.index)
    folders = walk(root)
    level = _patient_level(folders, ids)
    found: dict[str, list[Path]] = {}
    for where, parts, dirs, _ in folders:
        if len(parts) + 1 == level:
            for d in dirs:
                if d in ids:
                    found.setdefault(d, []).append(where / d)
    # as scan_cohort counts them: folders at that level holding a file the walk reaches
    unlisted = {root.joinpath(*parts[:level]) for _, parts, _, files in folders
                if files and level is not None and len(parts) >= level and parts[level - 1] not in ids}
    return found, sorted(unlisted)


def scan_cohort(root: Path | str, subjects: SubjectTable | None = None) -> Cohort:
    """Sort every file under ``root`` into cells, overviews and skipped files by the module's rule.

    Without ``subjects`` the folder must be DeepAPL as published; its ``Data/All`` is scanned
    with ``Data/master.csv``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if subjects is None:
        table = deepapl_table(root)
        if table is None:
            raise DataError(f"{root}: no subjects table ({DEEPAPL_TABLE} beside an {DEEPAPL_CELLS} "
                            f"folder); name one with --subjects FILE")
        subjects = load_subjects(table)
        root = table.parent / DEEPAPL_CELLS
    ids = set(subjects.table.index)
    folders = walk(root)
    level = _patient_level(folders, ids)
    if level is None:
        raise DataError(f"{root}: no folder is named by a patient id of {subjects.path} "
                        f"({_preview(sorted(ids))})")
    table_file = subjects.path.resolve()
    rows: list[dict] = []
    overviews: list[dict] = []
    skipped: list[tuple[str, str]] = []
    unlisted: Counter[str] = Counter()
    for where, parts, _, files in folders:
        for name in files:
            f = where / name
            if real_path(f) == str(table_file):
                continue
            if not is_image_file(f):
                skipped.append((str(f), "not an image"))
                continue
            if len(parts) < level:
                skipped.append((str(f), "not inside a patient folder"))
                continue
            subject = parts[level - 1]
            if subject not in ids:
                unlisted[str(Path(*parts[:level]))] += 1
                skipped.append((str(f), f"folder {subject!r} is not a patient of {subjects.path}"))
                continue
            head = read_header(f, skipped)
            if head is None:
                continue
            path = real_path(f)
            if head.overview:
                overviews.append(dict(path=path, subject=subject, width=head.width, height=head.height))
                continue
            holder = parts[-1] if len(parts) > level else None
            typed = holder is not None and holder.casefold() not in UNLABELLED_FOLDERS
            rows.append(dict(path=path, label=holder if typed else UNLABELLED, subject=subject,
                             source_split="train" if typed else "unlabelled"))
    if not rows:
        raise DataError(f"{root}: no cells in the patient folders ({len(overviews)} overview image(s), "
                        f"{len(skipped)} skipped file(s))")
    cells = make_manifest(rows)
    extra = subjects.table.loc[cells["subject"]].reset_index(drop=True)
    cells = with_skipped(pd.concat([cells, extra], axis=1), skipped_files(cells))  # concat drops the list
    cells["subjects_file"] = str(subjects.path.resolve())
    return Cohort(
        root=root, subjects=subjects, cells=cells,
        overviews=pd.DataFrame(overviews, columns=["path", "subject", "width", "height"]),
        skipped=skipped, unlisted_folders=dict(sorted(unlisted.items())),
        patients_without_cells=sorted(ids - set(cells["subject"])),
    )


def subject_labels(m: Manifest, target: str) -> pd.Series:
    """The patient-level label of each subject (index: subject) from the column ``target``.

    Raises one error naming the subjects file and the column when the table lacks it or leaves it
    blank for a patient, so ``train --target`` fails before any work.
    """
    if "subjects_file" not in m or m["subjects_file"].isna().all():
        raise DataError(f"--target {target!r}: these data have no subjects table; a patient-level "
                        f"label needs a cohort (a folder per patient and a CSV keyed by it)")
    files = sorted(set(m["subjects_file"].dropna()))
    column = snake_case(target)
    if column not in m or column in _RESERVED:
        columns = [str(c).strip() for c in pd.read_csv(files[0], nrows=0, encoding="utf-8-sig").columns]
        raise _no_column(Path(files[0]), target, columns, " for --target")
    per = m.dropna(subset=["subjects_file"]).groupby("subject", sort=True)[column].first()
    blank = sorted(per[per.isna()].index)
    if blank:
        raise DataError(f"{', '.join(files)}: column {column!r} is blank for {len(blank)} patient(s) "
                        f"({_preview(blank)})")
    return per.rename(column)


def label_conflicts(m: Manifest) -> pd.DataFrame:
    """Byte-identical files filed under two or more labels of one patient (label noise).

    One row per file in such a clash (subject, sha1, label, path), sorted; only files whose size
    matches another labelled file of the same patient, one with two labels or more, are hashed.
    """
    cols = ["subject", "sha1", "label", "path"]
    lab = m.loc[(m["source_split"] != "unlabelled") & m["subject"].notna(), ["subject", "label", "path"]]
    lab = lab[lab.groupby("subject")["label"].transform("nunique") > 1]
    lab = lab.assign(size=[os.path.getsize(p) for p in lab["path"]])
    lab = lab[lab.duplicated(["subject", "size"], keep=False)]
    lab = lab.assign(sha1=[file_digest(p) for p in lab["path"]])
    clash = lab.groupby(["subject", "sha1"])["label"].transform("nunique") > 1
    return lab.loc[clash, cols].sort_values(cols).reset_index(drop=True)
