"""Image paths stored relative to a data root, so a moved data folder still works.

Split files (a bundle's split.csv, ``data split``) and audit outputs name thousands of images. Written as
absolute paths they break the day the data folder moves; so they store each path relative to the images'
common folder, the *data root*, recorded beside them: a ``data_root`` column in a CSV (``stored`` /
``resolved``), a ``data_root`` key in JSON (``stored_json`` / ``resolved_json``). Reading joins them again:
onto the recorded root, unless the images at hand (``present``, e.g. the manifest given to ``evaluate
--side``) hold none of the paths so joined (the folder moved, or a copy of it is given): then onto the folder
where the same relative paths now sit among them. A file from before (no ``data_root``) is read as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: bundles load (every predict) without pandas
    import pandas as pd

#: The column (CSV) or key (JSON) that records the data root.
ROOT = "data_root"


def data_root(paths: Iterable[str]) -> str:
    """The deepest folder holding every one of ``paths`` (absolute)."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    return os.path.commonpath(sorted(folders)) if folders else ""


def relative(path: str, root: str) -> str:
    """``path`` relative to ``root``, with ``/`` separators (the same file on every system)."""
    return os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/")


def stored(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as a file stores it: ``path`` relative to the data root, recorded in a ``data_root``
    column."""
    if "path" not in frame or frame.empty or not all(os.path.isabs(p) for p in frame["path"].astype(str)):
        return frame  # relative paths already name no root of their own: kept as given
    root = data_root(frame["path"].astype(str))
    return frame.assign(path=[relative(p, root) for p in frame["path"].astype(str)], **{ROOT: root})


def moved_root(paths: Iterable[str], present: Iterable[str]) -> str | None:
    """Where relative ``paths`` now sit: the folder that, joined with one of them, gives a path in
    ``present``."""
    by_name: dict[str, list[str]] = {}
    for p in paths:
        by_name.setdefault(p.rsplit("/", 1)[-1], []).append(p)
    for q in present:
        q = str(q).replace(os.sep, "/")
        for p in by_name.get(q.rsplit("/", 1)[-1], []):
            if q.endswith("/" + p):
                return q[: -len(p) - 1]
    return None


def resolved(frame: pd.DataFrame, present: Iterable[str] | None = None) -> pd.DataFrame:
    """``frame`` as ``stored`` wrote it, with absolute paths again (see the module's docstring)."""
    if ROOT not in frame:
        return frame
    root = str(frame[ROOT].iloc[0]) if len(frame) else ""
    rel = frame["path"].astype(str)
    if present is not None:  # the recorded folder gone, or a copy of it given while it is still there
        present = [str(q) for q in present]
        if not set(_joined(root, rel)) & set(present):
            root = moved_root(rel, present) or root
    return frame.drop(columns=ROOT).assign(path=_joined(root, rel))


def _joined(root: str, paths: Iterable[str]) -> list[str]:
    return [os.path.normpath(os.path.join(root, p)) for p in paths]


def _walk(data: Any, change: Callable[[str], str]) -> Any:
    """``data`` (JSON) with ``change`` applied to every ``path`` value and every item of a ``paths`` list."""
    if isinstance(data, dict):
        return {k: change(v) if k == "path" and isinstance(v, str)
                else [change(p) for p in v] if k == "paths" and isinstance(v, list)
                else _walk(v, change) for k, v in data.items()}
    if isinstance(data, list):
        return [_walk(v, change) for v in data]
    return data


def stored_json(data: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """JSON ``data`` as a file stores it: every ``path`` / ``paths`` relative to the data root of ``paths``,
    recorded under ``data_root``."""
    root = data_root(paths)
    return {ROOT: root, **_walk(data, lambda p: relative(p, root))}


def resolved_json(data: dict[str, Any], root: str | None = None) -> dict[str, Any]:
    """JSON written by ``stored_json`` with absolute paths again, joined onto ``root`` (where the data
    folder is now) or else the recorded root."""
    if ROOT not in data:
        return data
    base = root or str(data[ROOT])
    rest = {k: v for k, v in data.items() if k != ROOT}
    return _walk(rest, lambda p: os.path.normpath(os.path.join(base, p)))
