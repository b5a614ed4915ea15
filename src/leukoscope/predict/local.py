"""Batch prediction to CSV on this machine: streaming, resumable, skipping what cannot be read.

Memory stays flat in the number of images: paths come from a generator, a few batches at a time
are decoded and scored on worker threads (``scored_batches``), and rows are appended to
``<out>.partial`` and flushed after every batch. A finished run renames the partial file into place;
a killed run leaves it, and the next run with the same output keeps its rows and predicts only the
paths not yet in it (a torn last record is cut off first).

``<out>.partial.json`` records what produces the rows (bundle files, runtime, TTA, input list), so
a rerun resumes only the same run and refuses another one, naming what differs, unless told to
restart. ``<out>.lock`` (flock) keeps a second run off the same output while one writes it. Paths
are written as their bytes: a name that is not UTF-8 goes into the CSV as it is on disk.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from leukoscope.batches import chunks, ordered_map
from leukoscope.bundle import CARD, HISTORY, METRICS, ONNX, ONNX_INT8, SPLIT, Bundle
from leukoscope.data.images import is_image_file, iter_image_files, load_batch
from leukoscope.data.names import subject_from_name
from leukoscope.errors import DataError
from leukoscope.filenames import NAME_ERRORS
from leukoscope.io import write_json_atomic
from leukoscope.locks import exclusive
from leukoscope.predict import ENGINES, unfamiliar
from leukoscope.predict.tta import proba_from_views
from leukoscope.progress import SILENT, Progress
from leukoscope.settings import threads

P = TypeVar("P", str, Path)
_GLOB_CHARS = set("*?[")
#: Bundle files that document a model without changing its numbers (left out of its digest).
_DOCUMENTS = {METRICS, SPLIT, HISTORY, CARD}
_RUNTIME_OF_FILE = {ONNX: "onnx", ONNX_INT8: "onnx-int8"}
_BIG = 1 << 20


@dataclass
class PredictSummary:
    """What a predict run did; ``skipped`` lists ``(path, reason)`` of unreadable inputs."""

    out: Path
    predicted: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: ``Bundle.adaptation`` of the model that scored them (``--adapt``), else None
    adaptation: dict[str, Any] | None = None

    @property
    def rows(self) -> int:
        return self.predicted + self.resumed

    @property
    def images_per_second(self) -> float:
        return (self.predicted + len(self.skipped)) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out), "rows": self.rows,
                "images_per_second": self.images_per_second}


def partial_path(out: Path) -> Path:
    """Where an unfinished run keeps its rows."""
    return Path(out).with_name(Path(out).name + ".partial")


def run_record_path(out: Path) -> Path:
    """Where an unfinished run records what produces its rows (bundle, settings, inputs)."""
    return Path(out).with_name(Path(out).name + ".partial.json")


def prob_columns(classes: Sequence[str]) -> list[str]:
    return [f"p_{c}" for c in classes]


def header(classes: Sequence[str]) -> list[str]:
    """The CSV's columns, named as on the web page's CSV (``predicted``); ``subject`` is always there, empty
    where the file name gives none (C-NMC ``UID_<subject>_`` names give one)."""
    return ["path", "subject", "predicted", *prob_columns(classes)]


def _expand(item: str) -> Iterator[Path]:
    try:
        mode = os.stat(item).st_mode  # one call, not is_dir() then is_file(): inputs may be 100,000 files
    except (OSError, ValueError):
        mode = 0
    if stat.S_ISDIR(mode):
        yield from iter_image_files(Path(item))
    elif stat.S_ISREG(mode):
        yield Path(item)
    elif _GLOB_CHARS & set(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise DataError(f"{item}: pattern matches no file")
        for m in map(Path, matches):
            if m.is_dir():
                yield from iter_image_files(m)
            elif is_image_file(m):
                yield m
    else:
        raise DataError(f"{item}: no such file or folder")


def iter_inputs(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Absolute image paths from files, folders (recursive) and globs; each file once (by its real path:
    a recursive glob follows a symlink loop to the same files again and again), as first spelled, in order."""
    seen: set[str] = set()
    folders: dict[str, str] = {}  # each folder resolved once: realpath of every file took 2 s per 100,000
    for item in inputs:
        for p in _expand(str(item)):
            path = os.path.abspath(p)
            folder, name = os.path.split(path)
            if folder not in folders:
                folders[folder] = os.path.realpath(folder)
            key = os.path.realpath(path) if os.path.islink(path) else os.path.join(folders[folder], name)
            if key not in seen:
                seen.add(key)
                yield Path(path)


def decode_size(config: dict[str, Any]) -> int | None:
    """The side a network bundle resizes every image to first, which decoding does (on Pillow's image,
    one copy fewer); None where the whole image is needed first (crop to the cell, other families)."""
    pre = config.get("preprocessing")
    return None if not pre or pre.get("crop_to_cell") else int(pre["input_size"])


def scored_batches(bundle: Bundle, paths: Iterable[P], batch_size: int, tta: bool = False
                   ) -> Iterator[tuple[list[P], np.ndarray, np.ndarray | None, list[tuple[str, str]]]]:
    """The one pipeline of every engine: per batch of ``paths``, (readable paths, logits per view
    (images x views x classes), their unfamiliarity (None without a scorer), ``(path, reason)`` of
    unreadable ones), in input order.

    A bundle whose batches may be scored at once (``parallel_batches``: ONNX, one core per call)
    gets one thread per core, each decoding, preparing and scoring its own batch. Others score on
    this thread while a worker decodes and ``bundle.prepare``s (resizes, normalises) the next batch.
    Pillow, numpy and the runtimes release the GIL, so both ways keep every core busy. With ``tta``
    the views are made from the decoded images.
    """
    size = decode_size(bundle.config)

    def load(chunk: list[P]) -> tuple[list[P], Any, list[tuple[str, str]]]:
        ok, images, skipped = load_batch(chunk, size=size)
        return ok, images if tta or not images else bundle.prepare(images), skipped

    def score(loaded: tuple[list[P], Any, list[tuple[str, str]]]
              ) -> tuple[list[P], np.ndarray, np.ndarray | None, list[tuple[str, str]]]:
        ok, batch, skipped = loaded
        scores: np.ndarray | None = None
        if not ok:
            views = np.zeros((0, 8 if tta else 1, len(bundle.classes)))
        elif tta:
            views, scores = unfamiliar.scored_views(bundle, batch, tta=True)
        else:
            logits, scores = bundle.prepared_scored_logits(batch)
            views = np.asarray(logits)[:, None, :]
        return ok, views, scores, skipped

    batches = chunks(paths, batch_size)
    if not bundle.parallel_batches:
        yield from map(score, ordered_map(load, batches, 1))
        return
    from threadpoolctl import threadpool_limits

    # numpy's BLAS (the unfamiliarity score's product) on one core per batch too: its own threads,
    # spinning beside the batch threads, cost a quarter of the run (aria_all Lite0, 800 cells, 2 cores)
    with threadpool_limits(1, user_api="blas"):
        yield from ordered_map(lambda chunk: score(load(chunk)), batches, threads())


def _records(text: str) -> Iterator[tuple[list[str], int]]:
    """The records of CSV ``text`` that were written whole, each with the offset just past it, up to the
    first torn one. Records, not lines: a quoted path may hold line breaks. A record is whole where it
    ends a line without needing the end of the data (which closes a torn quote or field)."""
    end, ended = 0, False

    def lines() -> Iterator[str]:
        nonlocal end, ended
        for line in io.StringIO(text, newline=""):  # splits at \r and \n only, keeping them
            end += len(line)
            yield line
        ended = True

    try:
        for row in csv.reader(lines()):
            if ended or not text.endswith("\n", 0, end):
                return
            yield row, end
    except csv.Error:
        return


def _resume(out: Path, cols: list[str], record: dict[str, Any]) -> set[str]:
    """Paths already written by an interrupted run of the same ``record`` (after cutting everything from
    the first torn or malformed record on); the rows of another run raise, saying what differs."""
    partial, recorded = partial_path(out), run_record_path(out)
    if not partial.exists():
        return set()
    data = partial.read_bytes()
    text = data.decode("utf-8", NAME_ERRORS)
    records = _records(text)
    first = next(records, None)
    if first is None:
        return set()
    if first[0] != cols:
        raise DataError(f"{partial}: left by a run with other classes or columns (or an older leukoscope's); "
                        "rerun with --restart to discard it")
    done: set[str] = set()
    end = first[1]
    for row, row_end in records:
        if len(row) != len(cols):
            break
        done.add(row[0])
        end = row_end
    if not done:  # a header and no whole row: nothing to keep
        return set()
    try:
        old = json.loads(recorded.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError):
        raise DataError(f"{partial}: no record of the run that wrote it ({recorded.name} is missing or "
                        "unreadable); rerun with --restart to discard its rows") from None
    if diff := _differences(old, record):
        raise DataError(f"{partial}: rows of another run ({'; '.join(diff)}); rerun with --restart to "
                        "discard them, or choose another --out")
    size = len(text[:end].encode("utf-8", NAME_ERRORS))  # the bytes read: surrogateescape round-trips them
    if size < len(data):
        with open(partial, "r+b") as f:
            f.truncate(size)
    return done


def check_inputs(inputs: Iterable[str | Path], batch_size: int, out: Path | None = None
                 ) -> tuple[list[str], int, str]:
    """The input items, how many image files they hold and a digest of their paths in order (shared
    by every engine); bad input raises, and so does an input image that ``out`` would overwrite."""
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")
    items = [str(i) for i in inputs]
    if not items:
        raise DataError("no input images given")
    target = os.path.realpath(out) if out is not None else None
    total, h = 0, hashlib.sha1()
    for p in iter_inputs(items):
        total += 1
        h.update(os.fsencode(p) + b"\0")
        if target is not None and os.path.realpath(p) == target:
            raise DataError(f"{out}: --out is one of the input images; name another file")
    if total == 0:
        raise DataError(f"no image files found in: {', '.join(items)}")
    return items, total, h.hexdigest()


def runtime_name(bundle: Bundle) -> str:
    """The ``load_bundle`` runtime that ``bundle`` runs on (``torch`` unless an ONNX file)."""
    return _RUNTIME_OF_FILE.get(getattr(bundle, "model_file", ""), "torch")


def bundle_digest(folder: Path) -> str:
    """SHA-1 identifying a bundle's config and weight files (documents left out): small files by
    their bytes, weight files over ``_BIG`` by size and modification time (as ``make`` and ``rsync``
    do: hashing 30 MB of weights was a fifth of a short run's start-up)."""
    h = hashlib.sha1()
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and p.name not in _DOCUMENTS:
            h.update(p.name.encode() + b"\0")
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode() if st.st_size > _BIG else p.read_bytes())
    return h.hexdigest()


def check_out(out: Path, bundle: Path) -> None:
    """Refuse an output that cannot become a CSV file, before any work: a folder, a file of the
    ``bundle`` (its config.json would be lost), or a folder that cannot be made."""
    if out.is_dir():
        raise DataError(f"{out}: --out is a folder; name the CSV file to write, e.g. "
                        f"{out / 'predictions.csv'}")
    if Path(os.path.realpath(out)).is_relative_to(os.path.realpath(bundle)):
        raise DataError(f"{out}: --out is inside the bundle {bundle}; write predictions elsewhere")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create its folder {out.parent} ({e.strerror})") from None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What a recorded run did otherwise than this one, as short phrases."""
    said = []
    if old.get("bundle_digest") != new["bundle_digest"]:
        was = old.get("bundle")
        said.append(f"bundle {new['bundle']} (was {was})" if was != new["bundle"]
                    else f"bundle {new['bundle']} (its files changed)")
    if old.get("runtime") != new["runtime"]:
        said.append(f"runtime {new['runtime']} (was {old.get('runtime')})")
    for flag in ("tta", "adapt"):  # a run recorded before --adapt existed did not adapt
        if bool(old.get(flag)) != new[flag]:
            said.append(f"--{flag} {'on' if new[flag] else 'off'} (was {'on' if old.get(flag) else 'off'})")
    if old.get("inputs_digest") != new["inputs_digest"]:
        n, was = new["inputs"], old.get("inputs")
        said.append(f"inputs ({n} images, was {was})" if n != was else f"inputs (other {n} images)")
    return said


def csv_row(path: str | Path, probs: np.ndarray, classes: Sequence[str],
            operating_point: dict[str, Any] | None = None,
            unfamiliarity: tuple[float, bool] | None = None) -> list[str]:
    """One output row (every engine): the path, its subject (or empty), the call (``unfamiliar.label``:
    the bundle's operating point or the most probable class), probabilities to 6 decimals; with
    ``unfamiliarity`` (score, flagged) its two cells too, and ``unfamiliar`` as the call if flagged."""
    flagged = unfamiliarity is not None and unfamiliarity[1]
    call = unfamiliar.label(classes, probs, flagged, operating_point)
    row = [str(path), subject_from_name(Path(path).name) or "", call, *(f"{v:.6f}" for v in probs)]
    if unfamiliarity is None:
        return row
    return [*row, f"{unfamiliarity[0]:.6f}", str(flagged).lower()]


@ENGINES.register("local")
def predict(bundle: Bundle, inputs: Iterable[str | Path], out_csv: Path | str, batch_size: int = 64,
            tta: bool = False, progress: Progress = SILENT, restart: bool = False, adapt: bool = False
            ) -> PredictSummary:
    """Predict every image under ``inputs`` into ``out_csv`` (path, subject, predicted, p_<class>...).

    ``progress`` counts input files, those kept from an interrupted run first, then after each batch.
    ``restart`` discards the rows of an interrupted run instead of resuming (or refusing) them. ``adapt``:
    the bundle is first adapted to all the inputs (``predict.adapt``; a resumed run adapts to them again).
    """
    out = Path(out_csv)
    check_out(out, bundle.path)
    with exclusive(out.with_name(out.name + ".lock"), f"another predict is writing {out}"):
        return _predict(bundle, inputs, out, batch_size, tta, progress, restart, adapt)


def _predict(bundle: Bundle, inputs: Iterable[str | Path], out: Path, batch_size: int, tta: bool,
             progress: Progress, restart: bool, adapt: bool) -> PredictSummary:
    """``predict`` once the output is checked and held."""
    from leukoscope.predict.adapt import adapt_to

    items, total, inputs_digest = check_inputs(inputs, batch_size, out)
    classes = bundle.classes
    cols = header(classes) + unfamiliar.columns(bundle)
    partial = partial_path(out)
    record = {"bundle": str(bundle.path), "bundle_digest": bundle_digest(bundle.path),
              "runtime": runtime_name(bundle), "tta": tta, "adapt": adapt, "inputs": total,
              "inputs_digest": inputs_digest}
    done = set() if restart else _resume(out, cols, record)
    if adapt:
        bundle = adapt_to(bundle, [str(p) for p in iter_inputs(items)], batch_size, progress)
    summary = PredictSummary(out=out, resumed=len(done), adaptation=bundle.adaptation)
    todo = (p for p in iter_inputs(items) if str(p) not in done)
    start = time.perf_counter()
    with open(partial, "a", newline="", encoding="utf-8", errors=NAME_ERRORS) as f:
        writer = csv.writer(f)
        if not done:  # rows of another run go before this run's record is written
            f.seek(0)
            f.truncate()
            writer.writerow(cols)
            f.flush()
            write_json_atomic(run_record_path(out), record)
        advance = progress.task("predicting", total)
        advance(len(done))
        for paths, views, scores, skipped in scored_batches(bundle, todo, batch_size, tta):
            summary.skipped += skipped
            if paths:
                probs = proba_from_views(views, bundle.temperature)
                marks = unfamiliar.marks(bundle, scores, len(probs))
                writer.writerows(csv_row(p, row, classes, bundle.operating_point, u)
                                 for p, row, u in zip(paths, probs, marks, strict=True))
                f.flush()
            summary.predicted += len(paths)
            advance(len(paths) + len(skipped))
    progress.done("predicting")
    os.replace(partial, out)
    run_record_path(out).unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - start
    return summary
