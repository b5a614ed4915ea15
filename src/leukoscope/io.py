"""Atomic writes: every output leukoscope writes appears whole or not at all.

Each writer writes a temporary file next to the target and renames it onto the target
(``os.replace`` is atomic within one file system), so a killed run or a reader racing a writer
never sees half a file, and a rerun resumes from whole outputs only. The temporary name keeps the
target's suffix (writers such as ``np.save`` choose their format by it) and carries the process
and thread ids, so parallel workers writing the same target never share a temporary file.

This module is the bottom layer: it imports nothing of leukoscope.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed onto ``path`` when the block ends,
    removed if it raises."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _json_default(o: Any) -> Any:
    """JSON for what ``json`` cannot encode itself: numpy scalars and arrays, paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json_atomic(path: Path | str, data: Any) -> Path:
    """Indented JSON with a final newline; numpy values and paths are written as plain JSON."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def write_csv_atomic(path: Path | str, frame: pd.DataFrame, *, index: bool = False) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)
    return Path(path)
