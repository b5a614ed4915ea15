"""Batch prediction to CSV on this machine: streaming, resumable, skipping what cannot be read.

Memory stays flat in the number of images: paths come from a generator, batches are decoded on a
worker thread (PIL releases the GIL, so decoding overlaps the model) into a short queue, and rows
are appended to ``<out>.partial`` and flushed after every batch. A finished run renames the
partial file into place; a killed run leaves it, and the next run with the same output keeps its
rows and predicts only the paths not yet in it (a torn last line is cut off first).
"""

from __future__ import annotations

import csv
import glob
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from leukoscope.bundle import Bundle
from leukoscope.data.images import is_image_file, iter_image_files, load_batch
from leukoscope.errors import DataError
from leukoscope.predict.tta import predict_proba

T = TypeVar("T")
_GLOB_CHARS = set("*?[")
_END = object()


@dataclass
class PredictSummary:
    """What a predict run did; ``skipped`` lists ``(path, reason)`` of unreadable inputs."""

    out: Path
    predicted: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

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


def header(classes: Sequence[str]) -> list[str]:
    return ["path", "label", *[f"p_{c}" for c in classes]]


def _expand(item: str) -> Iterator[Path]:
    p = Path(item)
    if p.is_dir():
        yield from iter_image_files(p)
    elif p.is_file():
        yield p
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
    """Absolute image paths from files, folders (recursive) and globs; each path once, in order."""
    seen: set[str] = set()
    for item in inputs:
        for p in _expand(str(item)):
            key = os.path.abspath(p)
            if key not in seen:
                seen.add(key)
                yield Path(key)


def chunks(it: Iterable[T], n: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prefetch(it: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``it`` on a worker thread, at most ``depth`` items ahead; errors re-raise here."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in it:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    worker = threading.Thread(target=run, name="leukoscope-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def _resume(partial: Path, cols: list[str]) -> set[str]:
    """Paths already written by an interrupted run (after cutting a torn last line)."""
    if not partial.exists():
        return set()
    data = partial.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(partial, "r+b") as f:
            f.truncate(len(data))
    lines = data.decode("utf-8").splitlines()
    if not lines:
        return set()
    if next(csv.reader([lines[0]])) != cols:
        raise DataError(f"{partial}: left by a run with other classes or columns; delete it to start over")
    return {row[0] for row in csv.reader(lines[1:]) if row}


def check_inputs(inputs: Iterable[str | Path], batch_size: int) -> tuple[list[str], int]:
    """The input items and how many image files they hold (shared by every engine); bad input raises."""
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")
    items = [str(i) for i in inputs]
    if not items:
        raise DataError("no input images given")
    total = sum(1 for _ in iter_inputs(items))
    if total == 0:
        raise DataError(f"no image files found in: {', '.join(items)}")
    return items, total


def csv_row(path: str | Path, probs: np.ndarray, classes: Sequence[str]) -> list[str]:
    """One output row (every engine): the path, the most probable class, probabilities to 6 decimals."""
    return [str(path), classes[int(probs.argmax())], *(f"{v:.6f}" for v in probs)]


def predict(bundle: Bundle, inputs: Iterable[str | Path], out_csv: Path | str, batch_size: int = 64,
            tta: bool = False, on_progress: Callable[[int, int], None] | None = None) -> PredictSummary:
    """Predict every image under ``inputs`` into ``out_csv`` (path, label, p_<class>...).

    ``on_progress(done, total)`` is called after each batch (``total`` counts input files).
    """
    items, total = check_inputs(inputs, batch_size)
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    classes = bundle.classes
    cols = header(classes)
    partial = partial_path(out)
    done = _resume(partial, cols)
    summary = PredictSummary(out=out, resumed=len(done))
    todo = (p for p in iter_inputs(items) if str(p) not in done)
    start = time.perf_counter()
    with open(partial, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if not done:
            f.seek(0)
            f.truncate()
            writer.writerow(cols)
        if on_progress:
            on_progress(len(done), total)
        for paths, images, skipped in prefetch(load_batch(b) for b in chunks(todo, batch_size)):
            summary.skipped += skipped
            if images:
                probs = predict_proba(bundle, images, tta)
                writer.writerows(csv_row(p, row, classes) for p, row in zip(paths, probs, strict=True))
                f.flush()
            summary.predicted += len(images)
            if on_progress:
                on_progress(summary.rows + len(summary.skipped), total)
    os.replace(partial, out)
    summary.seconds = time.perf_counter() - start
    return summary
