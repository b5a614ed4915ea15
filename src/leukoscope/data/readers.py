"""Readers: one per on-disk layout, each returning a Manifest; ``read`` detects the layout.

Layouts are registered with ``@layout(name)`` (and named in ``leukoscope.data.LAYOUTS``), so
supporting a new data set is one function, and ``--layout`` accepts exactly the registered names.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leukoscope.data import LAYOUTS
from leukoscope.data.cohort import Cohort, SubjectTable, is_deepapl, scan_cohort
from leukoscope.data.images import is_image_file, iter_image_files, load_rgb, real_path
from leukoscope.data.manifest import Manifest, make_manifest, skipped_files, validate, with_skipped
from leukoscope.data.names import subject_from_name
from leukoscope.data.paths import resolved
from leukoscope.data.synthetic import SYNTHETIC_MARKER
from leukoscope.errors import DataError, ImageError
from leukoscope.filenames import printable

_ALLIDB = re.compile(r"^Im(\d+)_([01])$", re.IGNORECASE)
_CNMC_LABELS_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
#: ALL-IDB's 1/0 and C-NMC's labels CSV mean the same two classes as C-NMC's folders.
_BINARY = {"1": "all", "0": "hem"}


@dataclass(frozen=True)
class Layout:
    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], Manifest]
    doc: str


def layout(name: str, detect: Callable[[Path], bool]) -> Callable:
    """Register a reader for a layout (its docstring's first line says what the layout is)."""

    def wrap(fn: Callable[[Path], Manifest]) -> Callable[[Path], Manifest]:
        LAYOUTS.add(name, Layout(name, detect, fn, (fn.__doc__ or "").strip().splitlines()[0]), fn.__module__)
        return fn

    return wrap


def _read_csv_table(path: Path) -> pd.DataFrame:
    """A CSV's cells as stripped-header strings, indexed by line number; refuses what pandas bends.

    pandas reads an empty file as an error without the file's name, shifts a row with one field
    too many into the index and pads a short row with NaN; here each is one ``DataError`` naming
    the file and the line. Blank lines are skipped; a spreadsheet's byte-order mark is dropped.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: not a readable CSV (empty file, no header row)")
    header = [c.strip() for c in rows[0][1]]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once")
    ragged = [(n, len(r)) for n, r in rows[1:] if len(r) != len(header)]
    if ragged:
        (n, width), more = ragged[0], len(ragged) - 1
        raise DataError(f"{path}: line {n} has {width} field(s), the header has {len(header)}"
                        + (f" ({more} more such line(s))" if more else ""))
    return pd.DataFrame([r for _, r in rows[1:]], columns=header, index=[n for n, _ in rows[1:]], dtype=str)


def _refuse_blank_cells(path: Path, table: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise ``DataError`` naming the first line with a blank cell in one of ``columns``."""
    blank = sorted((n, c) for c in columns for n in table.index[table[c].str.strip() == ""])
    if blank:
        (n, col), more = blank[0], len(blank) - 1
        raise DataError(f"{path}: line {n} has a blank {col!r} cell"
                        + (f" ({more} more blank cell(s))" if more else ""))


def _cnmc_root(path: Path) -> Path | None:
    for cand in (path, path / "C-NMC_Leukemia"):
        if (cand / "training_data").is_dir() or (cand / "validation_data").is_dir():
            return cand
    return None


def _image_files(folder: Path) -> list[Path]:
    return list(iter_image_files(folder))


def _preview(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (", ..." if len(names) > n else "")


@layout("cnmc", lambda p: p.is_dir() and _cnmc_root(p) is not None)
def read_cnmc(path: Path) -> Manifest:
    """C-NMC 2019 as downloaded: training_data/fold_*/{all,hem}, validation_data + labels CSV."""
    root = _cnmc_root(path)
    if root is None:  # --layout cnmc on another folder
        raise DataError(f"{path}: not a C-NMC download (no training_data/ or validation_data/ folder in it "
                        "or in its C-NMC_Leukemia/)")
    rows: list[dict] = []
    for fold_dir in sorted((root / "training_data").glob("fold_*")):
        for cls_dir in sorted(d for d in fold_dir.iterdir() if d.is_dir()):
            for f in _image_files(cls_dir):
                rows.append(
                    dict(path=real_path(f), label=cls_dir.name.lower(),
                         subject=subject_from_name(f.name), source_split="train",
                         source_fold=fold_dir.name, original_name=f.name)
                )
    rows += _cnmc_validation(root / "validation_data")
    test_dir = root / "testing_data"
    if test_dir.is_dir():
        for f in _image_files(test_dir):
            rows.append(dict(path=real_path(f), label="", subject=None,
                             source_split="unlabelled", source_fold=None, original_name=f.name))
    if not rows:
        raise DataError(f"{path}: C-NMC layout but no images under training_data/ or validation_data/")
    return make_manifest(rows)


def _cnmc_validation(folder: Path) -> list[dict]:
    if not folder.is_dir():
        return []
    csvs = list(folder.glob(_CNMC_LABELS_CSV)) or list(folder.glob("*.csv"))
    images = {f.name: f for f in _image_files(folder)}
    if not images:
        return []
    if not csvs:
        raise DataError(f"{folder}: images but no labels CSV ({_CNMC_LABELS_CSV})")
    table = _read_csv_table(csvs[0])
    need = ["Patient_ID", "new_names", "labels"]
    if not set(need) <= set(table.columns):
        raise DataError(f"{csvs[0]}: expected columns {sorted(need)}, found {list(table.columns)}")
    _refuse_blank_cells(csvs[0], table, need)
    listed = set(table["new_names"])
    missing = sorted(listed - set(images))
    unlisted = sorted(set(images) - listed)
    if missing or unlisted:
        parts = []
        if missing:
            parts.append(f"{len(missing)} row(s) name missing files ({_preview(missing)})")
        if unlisted:
            parts.append(f"{len(unlisted)} file(s) have no row ({_preview(unlisted)})")
        raise DataError(f"{csvs[0]} does not match {folder}: " + "; ".join(parts))
    rows = []
    for r in table.itertuples(index=False):
        if r.labels not in _BINARY:
            raise DataError(f"{csvs[0]}: label {r.labels!r} for {r.new_names} is not 0 or 1")
        rows.append(dict(path=real_path(images[r.new_names]), label=_BINARY[r.labels],
                         subject=subject_from_name(r.Patient_ID), source_split="val",
                         source_fold=None, original_name=r.Patient_ID))
    return rows


def _looks_allidb(p: Path) -> bool:
    if not p.is_dir():
        return False
    files = [f for f in p.iterdir() if is_image_file(f)]
    return bool(files) and all(_ALLIDB.match(f.stem) for f in files)


@layout("label-in-name", _looks_allidb)
def read_label_in_name(path: Path) -> Manifest:
    """ALL-IDB2 style flat folder, ImXXX_Y.tif/.jpg with Y=1 blast (all), Y=0 normal (hem)."""
    rows = []
    for f in sorted(f for f in path.iterdir() if is_image_file(f)):
        m = _ALLIDB.match(f.stem)
        if not m:
            raise DataError(f"{f}: name is not ImXXX_Y (Y = 1 blast, 0 normal)")
        rows.append(dict(path=real_path(f), label=_BINARY[m.group(2)], subject=None))
    if not rows:
        raise DataError(f"{path}: no images found")
    return make_manifest(rows)


@layout("cohort", is_deepapl)
def read_cohort(path: Path) -> Manifest:
    """Patient cohort: a folder per patient + a subjects CSV (DeepAPL: Data/master.csv, Data/All)."""
    c = scan_cohort(path)
    return with_skipped(c.cells, skipped_files(c.cells) + cohort_left_out(c))


def cohort_left_out(c: Cohort) -> list[tuple[str, str]]:
    """``(path, reason)`` of what the scan of ``c`` kept from the cells, for ``skipped_files``: so that
    train and evaluate say it as describe does. A folder the table does not list is one entry, not one
    per file in it, and so is a patient of the table without a cell; overviews are not listed (they are
    images, not cells, and describe counts them)."""
    folders = {c.root / name: n for name, n in c.unlisted_folders.items()}
    files = [(p, why) for p, why in c.skipped if not any(Path(p).is_relative_to(f) for f in folders)]
    table = c.subjects.path.name
    return (files + [(str(f), f"folder not in the patients table {table} ({n} file(s))")
                     for f, n in folders.items()]
            + [(str(c.root / s), f"patient {s} of {table} has no cell") for s in c.patients_without_cells])


def _class_dirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


@layout("class-folders", lambda p: p.is_dir() and bool(_class_dirs(p)))
def read_class_folders(path: Path) -> Manifest:
    """One sub-folder per class (any name); subjects parsed from C-NMC style UID_ names. An image beside
    the class folders has no class: it is left out and listed."""
    rows = []
    empty = []
    for d in _class_dirs(path):
        files = _image_files(d)
        if not files:
            empty.append(d.name)
        for f in files:
            rows.append(dict(path=real_path(f), label=d.name,
                             subject=subject_from_name(f.name)))
    if not rows:
        raise DataError(f"{path}: no images found in its sub-folders")
    if empty:
        raise DataError(f"{path}: class folder(s) with no images: {_preview(sorted(empty))}")
    m = make_manifest(rows)
    if m["subject"].notna().any() and m["subject"].isna().any():
        n = int(m["subject"].isna().sum())
        raise DataError(f"{path}: {n} image(s) have no UID_<subject>_ in their name while others do")
    loose = sorted(f for f in path.iterdir() if f.is_file() and is_image_file(f))
    beside = [(printable(str(f)), "beside the class folders, in none of them") for f in loose]
    return with_skipped(m, skipped_files(m) + beside)


@layout("csv", lambda p: p.is_file() and p.suffix.lower() == ".csv")
def read_csv_manifest(path: Path) -> Manifest:
    """A CSV with columns path,label[,subject]; relative paths are taken from the CSV's folder. A
    ``group`` column (a split file's: subjects merged over duplicate clusters) and a ``side`` column
    are kept, so a split file read as data keeps its groups."""
    table = _read_csv_table(path)
    if not {"path", "label"} <= set(table.columns):
        raise DataError(f"{path}: a manifest CSV needs columns path,label[,subject]")
    table = resolved(table)  # a split file's paths, stored relative to its recorded data root
    _refuse_blank_cells(path, table, ["path"])
    unlabelled = table.loc[table["label"].str.strip() == "", "path"].tolist()
    if unlabelled:
        raise DataError(f"{path}: {len(unlabelled)} row(s) have no label ({_preview(unlabelled)})")
    rows, missing = [], []
    for r in table.to_dict("records"):
        f = Path(r["path"])
        f = f if f.is_absolute() else path.parent / f
        if not f.is_file():
            missing.append(r["path"])
            continue
        subject = (r.get("subject") or "").strip() or None
        kept = {k: v.strip() for k in ("group", "side") if (v := (r.get(k) or "")).strip()}
        if "group" not in kept and "group" in table:
            kept["group"] = f"subject:{subject}" if subject is not None else f"image:{real_path(f)}"
        rows.append(dict(path=real_path(f), label=r["label"].strip(), subject=subject, **kept))
    if missing:
        raise DataError(f"{path}: {len(missing)} row(s) name missing files ({_preview(missing)})")
    if not rows:
        raise DataError(f"{path}: no rows")
    return make_manifest(rows)


def detect_layout(path: Path) -> str:
    """Name of the first registered layout whose detector accepts ``path``."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    for lay in LAYOUTS.values():
        if lay.detect(path):
            return lay.name
    if path.is_dir() and not any(path.iterdir()):
        raise DataError(f"{path}: empty folder")
    raise DataError(
        f"{path}: unknown layout; expected one of {', '.join(LAYOUTS)} (see --layout)"
    )


def read(paths: Sequence[Path | str], layout: str | None = None,
         subjects: SubjectTable | None = None, same_classes: bool = True) -> Manifest:
    """Read one or more data sets into one Manifest (their classes must agree, and be spelt one way, unless
    ``same_classes`` is off: a class map is about to map each set's labels to common ones).

    ``subjects`` reads every path as a patient cohort keyed by that table (see data/cohort.py). What a
    cohort's scan leaves out (``cohort_left_out``) joins ``skipped_files`` of the result.
    """
    m, cohorts = read_with_cohorts(paths, layout, subjects, same_classes)
    return with_skipped(m, skipped_files(m) + [s for c in cohorts for s in cohort_left_out(c)])


def read_with_cohorts(paths: Sequence[Path | str], layout: str | None = None,
                      subjects: SubjectTable | None = None, same_classes: bool = True
                      ) -> tuple[Manifest, list[Cohort]]:
    """``read``, also returning the scan of each cohort input (its overview images, skipped files).

    Files the readers left out (a name that is not UTF-8, see ``make_manifest``) are listed in
    ``skipped_files`` of the result, for the caller to count and name.
    """
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if subjects is not None and layout not in (None, "cohort"):
        raise DataError(f"--subjects reads patient cohorts; it does not go with --layout {layout}")
    if not paths:
        raise DataError("no input paths given")
    parts, cohorts = [], []
    for p in map(Path, paths):
        name = layout or ("cohort" if subjects is not None else detect_layout(p))
        if name == "cohort":  # a cohort's scan holds more than its cells: keep it for describe
            cohorts.append(scan_cohort(p, subjects))
            m = cohorts[-1].cells.copy()
        else:
            m = LAYOUTS[name].read(p)
        m["dataset"] = p.resolve().name
        m["layout"] = name
        m["synthetic"] = p.is_dir() and (p / SYNTHETIC_MARKER).is_file()
        parts.append(m)
    if len(parts) > 1 and same_classes:
        sets = [(str(path), set(part.loc[part["source_split"] != "unlabelled", "label"]))
                for path, part in zip(paths, parts, strict=True)]
        if len({frozenset(s) for _, s in sets}) > 1:
            desc = "; ".join(f"{k}: {sorted(v)}" for k, v in sets)
            raise DataError(f"the inputs have different classes ({desc}); a --class-map can map them to "
                            "common ones")
    # concat keeps attrs only where every part has the same
    m = validate(pd.concat(parts, ignore_index=True), spelled_once=same_classes)
    return with_skipped(m, [s for part in parts for s in skipped_files(part)]), cohorts


def drop_unreadable(m: Manifest) -> tuple[Manifest, list[tuple[str, str]]]:
    """Decode every image once; return the readable rows and ``(path, reason)`` for the rest."""
    keep, skipped = [], []
    for i, p in enumerate(m["path"]):
        try:
            load_rgb(p)
            keep.append(i)
        except ImageError as e:
            skipped.append((p, str(e).removeprefix(f"{p}: ")))
    return m.iloc[keep].reset_index(drop=True), skipped
