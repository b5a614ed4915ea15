"""Nearest neighbours by cosine: an exact blocked search, under several views of each row.

The audit compares DCT signatures under the eight views of ``geometry.D4`` at three zooms and, when given,
deep embeddings; both search each row's few nearest neighbours rather than every pair.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_BLOCK_CELLS = 1 << 22  # similarities held at once by the blocked neighbour search (16 MB)
_SEARCH_DIM, _PROJECT_FROM = 128, 2000  # embeddings of 2,000+ images are searched in 128-d PCA


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def nearest(x: np.ndarray, k: int, min_sim: float) -> list[tuple[int, int, float, int]]:
    """Top-``k`` neighbours of each row by cosine, exact blocked search.

    ``x`` is (n, d) or (n, t, d) for ``t`` transformed views of each row: row ``i`` under view
    ``v`` is compared with view 0 of every other row. Returns ``(i, j, sim, view)`` with
    ``sim >= min_sim``: row ``i`` under ``view`` is most like row ``j``, one per unordered pair
    (the direction of higher similarity). Views need not be invertible (a zoom is not).
    """
    views = x if x.ndim == 3 else x[:, None, :]
    ref = views[:, 0, :]
    n = len(ref)
    found: dict[tuple[int, int], tuple[float, int, bool]] = {}
    k = min(k, n - 1)
    if k < 1:
        return []
    block = max(1, _BLOCK_CELLS // (views.shape[1] * n))  # bounded memory for the full C-NMC set
    for rows in _blocks(n, block):
        part = views[rows]
        sims = (part.reshape(-1, part.shape[2]) @ ref.T).reshape(part.shape[0], part.shape[1], n)  # one GEMM
        best_view = sims.argmax(axis=1)
        best = np.take_along_axis(sims, best_view[:, None, :], axis=1)[:, 0, :]
        idx = np.arange(rows.start, rows.stop)
        best[idx - rows.start, idx] = -np.inf
        top = np.argpartition(-best, k - 1, axis=1)[:, :k]
        for r, i in enumerate(idx):
            for j in top[r]:
                s = float(best[r, j])
                if s < min_sim:
                    continue
                key = (min(i, int(j)), max(i, int(j)))
                if key not in found or found[key][0] < s:
                    found[key] = (s, int(best_view[r, j]), i == key[0])
    return [(i, j, s, v) if forward else (j, i, s, v) for (i, j), (s, v, forward) in sorted(found.items())]


def cosine_pairs(x: np.ndarray, min_cos: float, k: int = 5) -> list[tuple[int, int, float]]:
    """Pairs among each row's ``k`` nearest neighbours with cosine ``>= min_cos`` (rows unit norm).

    Wide vectors of a large set are searched in a 128-d PCA projection (ten times less work than
    the full width for deep embeddings), then every candidate is re-scored on the full vectors.
    """
    if x.shape[1] <= _SEARCH_DIM or len(x) < _PROJECT_FROM:
        return [(min(i, j), max(i, j), s) for i, j, s, _ in nearest(x, k, min_cos)]
    from sklearn.decomposition import PCA

    z = PCA(_SEARCH_DIM, svd_solver="randomized", random_state=0).fit_transform(x).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-9
    out = []
    for i, j, _, _ in nearest(z, k, min_cos - 0.05):
        s = float(x[i] @ x[j])
        if s >= min_cos:
            out.append((min(i, j), max(i, j), s))
    return out
