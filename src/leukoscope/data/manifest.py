"""The Manifest: one validated DataFrame describing a labelled image collection.

Columns (always present, in this order first):

- ``path``: absolute path of the image file (str);
- ``label``: class name (str);
- ``subject``: patient / donor id, or missing where the data set has none;
- ``group``: what splits group by: the subject where known, else the image path;
- ``source_split``: what the data set itself calls the image (train, val, test, unlabelled).

Readers may add columns (``fold`` for C-NMC training folds, ``original_name`` for renamed
files, ``dataset`` for the folder a row came from, ``synthetic`` when that folder holds the
SYNTHETIC.txt marker of generated data; for a patient cohort, ``subjects_file`` and the patient
table's columns in snake_case, see data/cohort.py); downstream code must not rely on them, except
through data/cohort.py's ``subject_labels``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

import pandas as pd

from leukoscope.errors import DataError
from leukoscope.filenames import printable

COLUMNS = ["path", "label", "subject", "group", "source_split"]
SOURCE_SPLITS = {"train", "val", "test", "unlabelled"}
UNLABELLED = ""

Manifest: TypeAlias = pd.DataFrame


#: Why a file whose path holds bytes that are not UTF-8 is left out (see ``make_manifest``).
NOT_UTF8 = "file or folder name is not valid UTF-8; rename it"


def _utf8(record: Mapping[str, Any]) -> bool:
    try:
        for v in record.values():
            if isinstance(v, str):
                v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def make_manifest(records: Iterable[Mapping[str, Any]]) -> Manifest:
    """Build a validated manifest from row dicts (``group`` is derived when absent).

    A row naming a file whose path is not valid UTF-8 (its bytes reach ``str`` as surrogate escapes) is
    left out and listed in ``skipped_files``: pandas' string columns, and every CSV, JSON and HTML file
    written from a manifest, cannot hold such a name. Every reader ends here, so every layout skips
    them alike; a data set of nothing else is a ``DataError``.
    """
    records = list(records)
    ok = [_utf8(r) for r in records]
    kept = [r for r, fine in zip(records, ok, strict=True) if fine]
    skipped = [(printable(str(r["path"])), NOT_UTF8) for r, fine in zip(records, ok, strict=True) if not fine]
    if records and not kept:
        raise DataError(f"none of the {len(records)} file(s) has a valid UTF-8 name; rename them "
                        f"(e.g. {skipped[0][0]})")
    df = pd.DataFrame.from_records(kept)
    if df.empty:
        df = pd.DataFrame(columns=COLUMNS)
    if "subject" not in df:
        df["subject"] = None
    if "source_split" not in df:
        df["source_split"] = "train"
    df["subject"] = df["subject"].astype("object").where(df["subject"].notna(), None)
    df["subject"] = _one_spelling(df["subject"])
    if "group" not in df:
        df["group"] = [
            f"subject:{s}" if s is not None else f"image:{p}"
            for s, p in zip(df["subject"], df["path"], strict=True)
        ]
    return with_skipped(validate(df), skipped)


def _spelling(name: str) -> str:
    """What two spellings of one name share: Unicode form (NFC), surrounding spaces and case aside."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def _one_spelling(subjects: pd.Series) -> pd.Series:
    """Subject ids that differ only in ``_spelling`` (``H6`` and ``h6`` in a table) as one id, the most
    common spelling, so that a split never puts one patient on two sides."""
    ids = subjects.dropna().astype(str)
    if ids.map(_spelling).nunique() == ids.nunique():
        return subjects
    counts = ids.value_counts()
    chosen: dict[str, str] = {}
    for name in sorted(counts.index, key=lambda n: (-counts[n], n)):
        chosen.setdefault(_spelling(name), name)
    return subjects.map(lambda v: v if v is None else chosen[_spelling(str(v))])


def skipped_files(m: Manifest) -> list[tuple[str, str]]:
    """``(path, reason)`` of each file the readers of ``m`` left out (paths printable)."""
    return list(m.attrs.get("skipped", []))


def with_skipped(m: Manifest, skipped: list[tuple[str, str]]) -> Manifest:
    """``m`` listing ``skipped`` as the files its readers left out (pandas keeps ``attrs`` through few
    operations: a reader that combines manifests hands the list on with this)."""
    if skipped:
        m.attrs["skipped"] = skipped
    return m


def validate(df: pd.DataFrame, spelled_once: bool = True) -> Manifest:
    """Check the schema and return the frame with the fixed columns first; with ``spelled_once``, also that
    no two labels differ only in spelling (off for sets a class map is about to map to common labels)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"manifest is missing column(s): {', '.join(missing)}")
    bad = set(df["source_split"]) - SOURCE_SPLITS
    if bad:
        raise DataError(f"manifest has unknown source_split value(s): {sorted(bad)}")
    if df["path"].duplicated().any():
        dup = df.loc[df["path"].duplicated(), "path"].iloc[0]
        raise DataError(f"manifest lists the same image twice: {dup}")
    spelled = pd.Series(sorted(set(df["label"].dropna().astype(str))))
    clash = spelled[spelled.map(_spelling).duplicated(keep=False)]
    if len(clash) and spelled_once:
        raise DataError("labels that differ only in case, surrounding spaces or Unicode form would be "
                        f"separate classes: {', '.join(map(repr, clash))}; spell each class one way")
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra].reset_index(drop=True)


def labelled(m: Manifest) -> Manifest:
    """Rows that carry a label (drops unlabelled test images)."""
    return m[m["source_split"] != "unlabelled"].reset_index(drop=True)


def classes(m: Manifest) -> list[str]:
    """Class names, sorted, so label indices are stable across runs and machines."""
    return sorted(set(labelled(m)["label"]))


def label_indices(m: Manifest, class_names: list[str]) -> list[int]:
    """Integer label of each row for the given class order."""
    index = {c: i for i, c in enumerate(class_names)}
    unknown = set(m["label"]) - set(index)
    if unknown:
        raise DataError(f"labels {sorted(unknown)} are not among the model's classes {class_names}")
    return [index[c] for c in m["label"]]


def has_subjects(m: Manifest) -> bool:
    """True when every labelled row has a subject id, so splits can group by patient."""
    lab = labelled(m)
    return bool(len(lab)) and bool(lab["subject"].notna().all())


def protocol(m: Manifest) -> str:
    """How honest a split of this manifest can be: ``subject-grouped`` or ``image-level``."""
    return "subject-grouped" if has_subjects(m) else "image-level"


def is_synthetic(m: Manifest) -> bool:
    """True when any row comes from a generated (SYNTHETIC) data set."""
    return bool(m["synthetic"].any()) if "synthetic" in m else False


SYNTHETIC_WARNING = (
    "SYNTHETIC data: generated cell-like images, not real cells; figures on them say nothing "
    "about real data"
)

IMAGE_LEVEL_WARNING = (
    "no subject ids: splits are image-level, so cells of one patient may sit on both sides "
    "and figures may be optimistic"
)


def warnings_for(m: Manifest) -> str | None:
    """The caveats every summary of ``m`` must carry (synthetic data, no subject ids), or None."""
    notes = [w for w, applies in ((SYNTHETIC_WARNING, is_synthetic(m)),
                                  (IMAGE_LEVEL_WARNING, protocol(m) == "image-level")) if applies]
    return "; ".join(notes) or None
