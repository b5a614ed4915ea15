"""``extract``: features for a manifest, content-addressed on disk so a second run is near-instant.

Layout: ``<cache>/features/<kind>-v<version>-<params hash>/<sha1 of the image file>.npy``, one
float32 row per image, written atomically; ``params.json`` beside them says what the folder holds.
Keying on file content (not path) means moved or renamed images still hit, and an edited image
misses. Parallel kinds run in worker processes over all cores, one chunk of paths per task (the
workers decode the images themselves, so no pixels cross process boundaries).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukoscope.batches import chunks, ordered_map
from leukoscope.data.images import file_digest, load_batch
from leukoscope.io import atomic_path, write_text_atomic
from leukoscope.progress import SILENT, Advance, Progress

if TYPE_CHECKING:  # pandas stays out of the worker processes' imports
    import pandas as pd

    from leukoscope.data.manifest import Manifest
    from leukoscope.features import FeatureExtractor

#: Below this many uncached images, worker start-up (a second or two) costs more than it saves.
_MIN_PARALLEL = 64
Skipped = list[tuple[str, str]]


def entry_dir(root: Path, extractor: FeatureExtractor) -> Path:
    """The cache folder of one (kind, version, params)."""
    blob = json.dumps({"kind": extractor.kind, "version": extractor.version,
                       "params": extractor.params()}, sort_keys=True, default=str)
    key = hashlib.sha1(blob.encode()).hexdigest()[:16]
    folder = Path(root) / "features" / f"{extractor.kind}-v{extractor.version}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "params.json"
    if not meta.exists():
        write_text_atomic(meta, blob + "\n")
    return folder


def _load_npy(path: Path) -> np.ndarray | None:
    """A cached row, or None when absent or unreadable (then it is recomputed and rewritten)."""
    try:
        return np.load(path) if path.exists() else None
    except (OSError, ValueError):
        return None


def _save_npy(path: Path, row: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, row)


def _compute_paths(extractor: FeatureExtractor, paths: Sequence[str]) -> list[tuple[str, Any]]:
    """Decode and featurise ``paths``: ``(path, row)`` or ``(path, error message)`` each."""
    return _featurise(extractor, *load_batch(paths))


def _featurise(extractor: FeatureExtractor, ok: Sequence[str], images: Sequence[np.ndarray],
               skipped: Sequence[tuple[str, str]]) -> list[tuple[str, Any]]:
    """``_compute_paths`` once decoded."""
    out: list[tuple[str, Any]] = list(skipped)
    if images:
        rows = np.asarray(extractor.compute(images), np.float32)
        out += list(zip(ok, rows, strict=True))
    return out


def _run(extractor: FeatureExtractor, paths: list[str], n_jobs: int, advance: Advance
         ) -> list[tuple[str, Any]]:
    """Compute features for ``paths``: worker processes for parallel kinds, batches otherwise."""
    results: list[tuple[str, Any]] = []
    if extractor.parallel and n_jobs != 1 and len(paths) >= _MIN_PARALLEL:
        from joblib import Parallel, delayed, effective_n_jobs

        workers = effective_n_jobs(n_jobs)
        size = int(np.clip(len(paths) // (workers * 8), 4, 64))
        tasks = (delayed(_compute_paths)(extractor, c) for c in chunks(paths, size))
        for part in Parallel(n_jobs=workers, return_as="generator_unordered")(tasks):
            results += part
            advance(len(part))
        return results
    size = extractor.batch_size if not extractor.parallel else 16
    for ok, images, skipped in ordered_map(load_batch, chunks(paths, size), 1):  # the next one decodes
        part = _featurise(extractor, ok, images, skipped)
        results += part
        advance(len(part))
    return results


def _digests(paths: Sequence[str]) -> tuple[dict[str, str], Skipped]:
    found, skipped = {}, []
    for p in paths:
        try:
            found[p] = file_digest(p)
        except OSError as e:
            skipped.append((p, f"cannot read file ({e.strerror or e})"))
    return found, skipped


def extract_with(m: Manifest, extractor: FeatureExtractor, cache: Path | None = None, *,
                 n_jobs: int = -1, progress: Progress = SILENT) -> tuple[pd.DataFrame, Skipped]:
    """Features of every readable image in ``m`` (index = ``m``'s index of the rows kept).

    Returns the frame and the skipped images as ``(path, reason)``; rows whose image cannot be
    decoded are left out of the frame, never silently filled. ``progress`` counts images (once per
    part of a composite kind), cached ones first.
    """
    import pandas as pd

    from leukoscope.settings import cache_dir

    root = Path(cache) if cache is not None else cache_dir()
    paths = [str(p) for p in m["path"]]
    digests, skipped = _digests(paths)
    parts = extractor.parts()
    task = f"{extractor.kind} features"
    advance = progress.task(task, len(paths) * len(parts))
    bad = {p for p, _ in skipped}
    found: list[dict[str, np.ndarray]] = []
    for part in parts:
        folder = entry_dir(root, part)
        width = len(part.names())
        rows: dict[str, np.ndarray] = {}
        missing: dict[str, str] = {}  # digest -> one path with that content
        for p, d in digests.items():
            if p in bad or d in rows or d in missing:
                continue
            row = _load_npy(folder / f"{d}.npy")
            if row is not None and row.shape == (width,):
                rows[d] = row
            else:
                missing[d] = p
        advance(len(paths) - len(missing))  # the rest is counted as it is computed
        for p, row in _run(part, list(missing.values()), n_jobs, advance):
            if isinstance(row, str):  # every file with these bytes is as unreadable, and listed
                same = [q for q, d in digests.items() if d == digests[p] and q not in bad]
                skipped += [(q, row) for q in same]
                bad.update(same)
                continue
            rows[digests[p]] = row
            _save_npy(folder / f"{digests[p]}.npy", row)
        found.append(rows)
    progress.done(task)
    keep = [(i, p) for i, p in zip(m.index, paths, strict=True) if p not in bad]
    columns = [n for part in parts for n in part.names()]
    data = np.zeros((len(keep), len(columns)), np.float32)
    col = 0
    for part, rows in zip(parts, found, strict=True):
        width = len(part.names())
        for r, (_, p) in enumerate(keep):
            data[r, col:col + width] = rows[digests[p]]
        col += width
    return pd.DataFrame(data, index=pd.Index([i for i, _ in keep]), columns=columns), skipped


def extract(m: Manifest, kind: str, cache: Path | None = None, *, n_jobs: int = -1,
            progress: Progress = SILENT, **params: Any) -> tuple[pd.DataFrame, Skipped]:
    """Features of kind ``kind`` (``handcrafted``, ``deep``, ``both``, ...) for manifest ``m``.

    ``cache`` defaults to ``settings.cache_dir()``; ``params`` go to the extractor.
    """
    from leukoscope.features import get_extractor

    return extract_with(m, get_extractor(kind, **params), cache, n_jobs=n_jobs, progress=progress)


def feature_matrix(m: Manifest, features: str, *, cache: Path | None = None,
                   feature_params: dict[str, Any] | None = None, progress: Progress = SILENT
                   ) -> tuple[Manifest, np.ndarray, dict[str, Any], Skipped]:
    """Labelled rows whose image could be featurised, their matrix, the feature spec, the skipped."""
    from leukoscope.data.manifest import labelled
    from leukoscope.features import get_extractor

    m = labelled(m)
    extractor = get_extractor(features, **(feature_params or {}))
    frame, skipped = extract_with(m, extractor, cache, progress=progress)
    kept = m.loc[frame.index].reset_index(drop=True)
    return kept, frame.to_numpy(np.float32), extractor.spec(), skipped
