"""Data audit: exact and near-duplicate cells, label conflicts and leakage hidden from subject ids.

Public cell-image sets are copied, re-encoded, flipped, rotated, cropped and merged; a near-copy of
a training cell on the test side inflates every figure, whatever the subject ids say. The audit
finds such copies before any model is trained:

1. **exact** duplicates share a hash of their decoded pixels (so one cell as BMP and PNG counts);
2. **near** duplicates are found in two stages. A low-frequency DCT signature (the coefficients a
   pHash thresholds, on a grayscale image centred on the cell when it sits on a black background)
   is compared under all 8 flips / 90-degree rotations, and each image's nearest neighbours become
   candidates. Each candidate is then verified by the best normalised cross-correlation of band-
   passed detail over small shifts and crops (template matching). Low frequencies alone cannot
   tell two round blobs apart; matching detail can, and stays high under JPEG and light crops;
3. **embedding** neighbours (opt-in): cosine similarity of the ``deep`` feature kind.

Pairs are joined into clusters (union-find). A cluster with two labels is a label conflict; one
whose members sit on two sides of a split (or of the data set's own train / test) is leakage; one
that spans two groups (subjects) would let a grouped split leak, which ``dedupe_groups`` fixes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy.fft import dctn
from scipy.ndimage import binary_dilation, gaussian_filter

from leukoscope.data.images import load_rgb
from leukoscope.data.manifest import Manifest
from leukoscope.errors import ConfigError, ImageError

if TYPE_CHECKING:
    from leukoscope.data.splits import Split

#: Default minimum detail correlation (0..1) for a verified near-duplicate.
THRESHOLD = 0.85
#: Default minimum cosine of deep embeddings for an embedding pair (with ``embeddings=True``).
EMBED_THRESHOLD = 0.97
_LOW = 32  # side of the grayscale image the DCT signature is computed on
_COEFFS = 8  # the signature keeps the top-left 8x8 DCT coefficients minus DC, as pHash does
_DETAIL = 64  # side of the band-passed image candidates are verified on
_TEMPLATE = 0.8  # verification slides the central 80 % of one image over the other
_BLACK = 12  # gray level below which a pixel is background (C-NMC cells sit on black)
_CANDIDATE_MIN = 0.4  # stage-1 cosine below which a neighbour is not worth verifying
_OUTLINE = 0.3  # weight of the outline band of a cell on black (interior detail weighs 1)
_BLOCK_CELLS = 1 << 22  # similarities held at once by the blocked neighbour search (16 MB)
_SEARCH_DIM, _PROJECT_FROM = 128, 2000  # embeddings of 2,000+ images are searched in 128-d PCA
_MIN_PARALLEL = 400  # below this many images, starting worker processes costs more than it saves
KINDS = ("exact", "near", "embedding")


@dataclass(frozen=True)
class Signature:
    """What the audit keeps of one image: pixel digest, DCT signatures, band-passed detail."""

    digest: str
    dct: np.ndarray  # (8, 63): the signature of each of the 8 dihedral transforms, unit norm
    detail: np.ndarray  # (_DETAIL, _DETAIL) float32, band-passed grayscale, untransformed
    side: int  # side in pixels of the centred square the signature was taken from
    norms: np.ndarray  # centred norm of every window of ``detail`` the size of a same-scale template


def dihedral(a: np.ndarray) -> list[np.ndarray]:
    """The 8 flips / 90-degree rotations of a square array (index 0 is the identity)."""
    out = []
    for k in range(4):
        r = np.rot90(a, k)
        out += [r, r.T]
    return out


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _centred(g: np.ndarray) -> np.ndarray:
    """The smallest square around the cell when it sits on black, else the image padded square.

    Cropping black margins (or adding them) then leaves the signature unchanged.
    """
    mask = g > _BLACK
    if mask.any() and mask.mean() < 0.9:
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    else:
        y0, y1, x0, x1 = 0, g.shape[0], 0, g.shape[1]
    half = max(y1 - y0, x1 - x0) / 2
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top, left = int(round(cy - half)), int(round(cx - half))
    side = int(round(2 * half))
    pad = max(0, -top, -left, top + side - g.shape[0], left + side - g.shape[1])
    if pad:
        g = np.pad(g, pad, mode="edge")
    return g[top + pad:top + pad + side, left + pad:left + pad + side]


def _resize(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((side, side), Image.Resampling.BOX),
                      dtype=np.float32)


def _bandpass(a: np.ndarray) -> np.ndarray:
    return (gaussian_filter(a, 0.7) - gaussian_filter(a, 3.0)).astype(np.float32)


def _detail(square: np.ndarray) -> np.ndarray:
    """Band-passed detail; for a cell on black only its interior, as outlines of round cells agree."""
    small = _resize(square, _DETAIL)
    detail = _bandpass(small)
    background = small <= _BLACK
    if background.mean() > 0.05:
        detail *= np.where(binary_dilation(background, iterations=3), _OUTLINE, 1.0).astype(np.float32)
    return detail


def signature(img: np.ndarray) -> Signature:
    """The audit's signature of one HxWx3 uint8 RGB image."""
    digest = hashlib.sha1(f"{img.shape}".encode() + np.ascontiguousarray(img).tobytes()).hexdigest()
    square = _centred(_gray(img))
    low = _resize(square, _LOW)
    dct = np.stack([dctn(t, norm="ortho")[:_COEFFS, :_COEFFS].ravel()[1:] for t in dihedral(low)])
    dct /= np.linalg.norm(dct, axis=1, keepdims=True) + 1e-9
    detail = _detail(square)
    return Signature(digest, dct.astype(np.float32), detail, square.shape[0],
                     _window_norms(detail, _template(detail, _DETAIL).shape))


def _window_norms(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centred L2 norm of ``a`` over every window of ``shape`` (from integral images)."""
    h, w = shape
    a = a.astype(np.float64)

    def box(x: np.ndarray) -> np.ndarray:
        c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]

    s1, s2 = box(a), box(a * a)
    return np.sqrt(np.maximum(s2 - s1 * s1 / (h * w), 1e-12))


def _ncc_max(a: np.ndarray, t: np.ndarray, norms: np.ndarray | None = None) -> float:
    """Best normalised cross-correlation of template ``t`` over every placement inside ``a``."""
    t = t - t.mean()
    tn = float(np.sqrt((t * t).sum()))
    if tn < 1e-6:
        return 0.0
    num = sliding_window_view(a, t.shape).reshape(-1, t.size) @ t.ravel()
    if norms is None:
        norms = _window_norms(a, t.shape)
    return float((num / (norms.ravel() * tn)).max())


def _template(a: np.ndarray, side: int) -> np.ndarray:
    b = a if side == a.shape[0] else _resize(a, side)
    q = int(round(side * (1 - _TEMPLATE) / 2))
    return b[q:side - q, q:side - q]


def verify(a: Signature, b: Signature, transform: int) -> float:
    """Detail correlation of ``b`` (under ``transform``) with ``a``, over shifts and two scales.

    Scales: the same frame (a crop resized back) and the same pixel size (a crop left as is). The
    central part of either image is slid over the other, so either may be the crop of the other.
    """
    db = np.ascontiguousarray(dihedral(b.detail)[transform])
    nb = dihedral(b.norms)[transform]  # square windows: the norms transform with the image
    best = 0.0
    for x, y, sx, sy, norms in ((a.detail, db, a.side, b.side, a.norms), (db, a.detail, b.side, a.side, nb)):
        for side in {_DETAIL, int(round(_DETAIL * sy / sx))}:
            t = _template(y, side)
            if 4 <= t.shape[0] <= _DETAIL:
                best = max(best, _ncc_max(x, t, norms if side == _DETAIL else None))
    return best


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def nearest(x: np.ndarray, k: int, min_sim: float) -> list[tuple[int, int, float, int]]:
    """Top-``k`` neighbours of each row by cosine, exact blocked search.

    ``x`` is (n, d) or (n, t, d) for ``t`` transformed views of each row: row ``i`` under view
    ``v`` is compared with view 0 of every other row. Returns unordered ``(i, j, sim, view)``
    pairs (``i < j``, highest similarity kept) with ``sim >= min_sim``.
    """
    views = x if x.ndim == 3 else x[:, None, :]
    ref = views[:, 0, :]
    n = len(ref)
    found: dict[tuple[int, int], tuple[float, int]] = {}
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
                # the transform maps the first of the pair onto the second; flip it if reversed
                view = int(best_view[r, j]) if i < j else _inverse(int(best_view[r, j]))
                if key not in found or found[key][0] < s:
                    found[key] = (s, view)
    return [(i, j, s, v) for (i, j), (s, v) in sorted(found.items())]


def _inverse(view: int) -> int:
    """Index of the inverse transform in ``dihedral``'s order (only the odd rotations differ)."""
    return {2: 6, 6: 2}.get(view, view)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


@dataclass
class AuditResult:
    """Everything the audit found; ``to_json()`` is what ``audit.json`` holds.

    ``pairs`` has one row per duplicate pair: ``a``, ``b`` (row positions in ``manifest``),
    ``kind`` (exact / near / embedding), ``similarity`` and ``cluster``. ``manifest`` is the
    audited manifest with ``cluster`` (-1 when unique) and ``side`` (None without sides).
    """

    manifest: Manifest
    pairs: pd.DataFrame
    sides_from: str | None
    threshold: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embeddings: bool = False

    def clusters(self) -> list[pd.DataFrame]:
        """The rows of each duplicate cluster (two or more images)."""
        m = self.manifest
        return [part for _, part in m[m["cluster"] >= 0].groupby("cluster", sort=True)]

    def label_conflicts(self) -> list[int]:
        """Clusters whose members carry two or more labels."""
        return [int(c["cluster"].iloc[0]) for c in self.clusters() if c["label"].nunique() > 1]

    def leaking(self) -> list[int]:
        """Clusters whose members sit on two or more sides."""
        return [int(c["cluster"].iloc[0]) for c in self.clusters() if c["side"].dropna().nunique() > 1]

    def cross_group(self) -> list[int]:
        """Clusters spanning two or more groups (subjects): a grouped split could leak them."""
        return [int(c["cluster"].iloc[0]) for c in self.clusters() if c["group"].nunique() > 1]

    def side_pairs(self) -> dict[str, dict[str, int]]:
        """Per pair of sides (``train/test``): duplicate pairs and clusters straddling them."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"pairs": 0, "clusters": 0})
        side = self.manifest["side"]
        for a, b in zip(self.pairs["a"], self.pairs["b"], strict=True):
            sa, sb = side.iloc[a], side.iloc[b]
            if sa is not None and sb is not None and sa != sb:
                out["/".join(sorted((str(sa), str(sb))))]["pairs"] += 1
        for c in self.clusters():
            sides = sorted(map(str, c["side"].dropna().unique()))
            for i, sa in enumerate(sides):
                for sb in sides[i + 1:]:
                    out[f"{sa}/{sb}"]["clusters"] += 1
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any]:
        clusters = self.clusters()
        return {
            "images": int(len(self.manifest)),
            "skipped": len(self.skipped),
            "pairs": {k: int((self.pairs["kind"] == k).sum()) for k in KINDS},
            "clusters": len(clusters),
            "images_in_clusters": int(sum(len(c) for c in clusters)),
            "label_conflicts": len(self.label_conflicts()),
            "cross_group_clusters": len(self.cross_group()),
            "leaking_clusters": len(self.leaking()),
            "sides_from": self.sides_from,
            "side_pairs": self.side_pairs(),
            "threshold": self.threshold,
            "embeddings": self.embeddings,
        }

    def pair_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per pair, both images described (path, label, group, side)."""
        m = self.manifest
        conflicts, leaks = set(self.label_conflicts()), set(self.leaking())
        out = []
        for r in self.pairs.itertuples(index=False):
            ra, rb = m.iloc[r.a], m.iloc[r.b]
            out.append({
                "kind": r.kind, "similarity": round(float(r.similarity), 4), "cluster": int(r.cluster),
                "label_conflict": ra["label"] != rb["label"],
                "cross_side": ra["side"] is not None and rb["side"] is not None
                and ra["side"] != rb["side"],
                "in_conflict_cluster": int(r.cluster) in conflicts,
                "in_leaking_cluster": int(r.cluster) in leaks,
                "a": _describe(ra), "b": _describe(rb),
            })
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "clusters": [{"cluster": int(c["cluster"].iloc[0]),
                          "labels": sorted(map(str, c["label"].unique())),
                          "groups": sorted(map(str, c["group"].unique())),
                          "sides": sorted(map(str, c["side"].dropna().unique())),
                          "members": [_describe(r) for _, r in c.iterrows()]} for c in self.clusters()],
            "pairs": self.pair_records(),
            "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
        }


def _describe(row: pd.Series) -> dict[str, Any]:
    return {"path": row["path"], "label": row["label"], "group": row["group"],
            "subject": row["subject"], "side": None if row["side"] is None else str(row["side"])}


def _sides(m: Manifest, split: Split | None) -> tuple[list[Any], str | None]:
    """Side of each row: from the split (side or fold), else the data set's own partition.

    The own partition is the source split, with the data set's name when several are audited
    together and its official fold where it has one (C-NMC's fold_0..2 are meant for CV).
    """
    if split is not None:
        col = "side" if "side" in split else "fold" if "fold" in split else None
        if col is None:
            raise ConfigError("the split has neither a 'side' nor a 'fold' column")
        lookup = dict(zip(split["path"].astype(str), split[col], strict=True))
        prefix = "fold " if col == "fold" else ""
        sides = [None if pd.isna(v := lookup.get(p)) else f"{prefix}{v}" for p in m["path"]]
        return sides, f"split ({col})"
    own = [m["source_split"].astype(str)]
    if "dataset" in m and m["dataset"].nunique() > 1:
        own.insert(0, m["dataset"].astype(str))
    if "source_fold" in m:
        own.append(m["source_fold"].fillna("").astype(str))
    sides = [" ".join(x for x in parts if x) for parts in zip(*own, strict=True)]
    if len(set(sides)) > 1:
        return sides, "the data sets' own partition"
    return [None] * len(m), None


def _signature_or_reason(path: str) -> Signature | str:
    try:
        return signature(load_rgb(path))
    except ImageError as e:
        return str(e).removeprefix(f"{path}: ")


def _chunk_signatures(paths: list[str]) -> list[Signature | str]:
    return [_signature_or_reason(p) for p in paths]


def _signatures(paths: list[str], n_jobs: int,
                on_image: Callable[[], None] | None) -> Iterator[Signature | str]:
    """Signature (or the reason it failed) of each path, in order; worker processes for many."""
    from joblib import Parallel, delayed, effective_n_jobs

    workers = effective_n_jobs(n_jobs)
    if workers == 1 or len(paths) < _MIN_PARALLEL:
        for p in paths:
            yield _signature_or_reason(p)
            if on_image:
                on_image()
        return
    size = int(np.clip(len(paths) // (workers * 8), 4, 64))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    tasks = (delayed(_chunk_signatures)(c) for c in chunks)
    for part in Parallel(n_jobs=workers, return_as="generator")(tasks):
        for sig in part:
            yield sig
            if on_image:
                on_image()


def _embedding_pairs(m: Manifest, rows: list[int], min_cos: float,
                     on_progress: Callable[[int, int], None] | None) -> list[tuple[int, int, float]]:
    """Pairs of ``rows`` whose deep embeddings have cosine ``>= min_cos``."""
    from leukoscope.features import extract

    sub = m.iloc[rows]
    feats, _ = extract(sub, "deep", on_progress=on_progress)
    x = feats.to_numpy(np.float32, copy=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-9
    position = {idx: rows[k] for k, idx in enumerate(sub.index)}
    kept = [position[i] for i in feats.index]
    return [(kept[i], kept[j], s) for i, j, s in cosine_pairs(x, min_cos)]


def cosine_pairs(x: np.ndarray, min_cos: float, k: int = 5) -> list[tuple[int, int, float]]:
    """Pairs among each row's ``k`` nearest neighbours with cosine ``>= min_cos`` (rows unit norm).

    Wide vectors of a large set are searched in a 128-d PCA projection (ten times less work than
    the full width for deep embeddings), then every candidate is re-scored on the full vectors.
    """
    if x.shape[1] <= _SEARCH_DIM or len(x) < _PROJECT_FROM:
        return [(i, j, s) for i, j, s, _ in nearest(x, k, min_cos)]
    from sklearn.decomposition import PCA

    z = PCA(_SEARCH_DIM, svd_solver="randomized", random_state=0).fit_transform(x).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-9
    out = []
    for i, j, _, _ in nearest(z, k, min_cos - 0.05):
        s = float(x[i] @ x[j])
        if s >= min_cos:
            out.append((i, j, s))
    return out


def audit(m: Manifest, split: Split | None = None, *, threshold: float = THRESHOLD,
          neighbours: int = 3, embeddings: bool = False, embed_threshold: float = EMBED_THRESHOLD,
          n_jobs: int = -1, on_image: Callable[[], None] | None = None,
          on_embed: Callable[[int, int], None] | None = None) -> AuditResult:
    """Find exact and near duplicates in ``m``; sides come from ``split`` or the source splits.

    ``threshold`` is the minimum detail correlation of a near pair; each image's ``neighbours``
    most similar signatures are verified. Unreadable images are skipped and listed. Signatures
    are computed in ``n_jobs`` worker processes (joblib's convention) once there are enough images.
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"--threshold must be in (0, 1], got {threshold}")
    sigs: list[Signature] = []
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    for i, (p, sig) in enumerate(zip(m["path"], _signatures(list(m["path"]), n_jobs, on_image), strict=True)):
        if isinstance(sig, str):
            skipped.append((p, sig))
        else:
            sigs.append(sig)
            keep.append(i)
    out = m.iloc[keep].reset_index(drop=True).copy()
    sides, sides_from = _sides(out, split)
    out["side"] = pd.Series(sides, dtype=object)

    pairs: list[tuple[int, int, str, float]] = []
    first: dict[str, int] = {}
    for i, s in enumerate(sigs):
        if s.digest in first:
            pairs.append((first[s.digest], i, "exact", 1.0))
        else:
            first[s.digest] = i
    reps = list(first.values())
    if len(reps) > 1:
        x = np.stack([sigs[i].dct for i in reps])
        x = x - x.mean(axis=(0, 1))  # cosine around the set's mean: what sets cells apart
        x /= np.linalg.norm(x, axis=2, keepdims=True) + 1e-9
        for a, b, _, view in nearest(x, neighbours, _CANDIDATE_MIN):
            score = verify(sigs[reps[b]], sigs[reps[a]], view)
            if score >= threshold:
                pairs.append((reps[a], reps[b], "near", score))
        if embeddings:
            pairs += [(a, b, "embedding", s)
                      for a, b, s in _embedding_pairs(out, reps, embed_threshold, on_embed)]
    return _assemble(out, pairs, sides_from, threshold, skipped, embeddings)


def _assemble(m: Manifest, pairs: list[tuple[int, int, str, float]], sides_from: str | None,
              threshold: float, skipped: list[tuple[str, str]], embeddings: bool) -> AuditResult:
    """Cluster the pairs (union-find), keeping one pair per image pair (exact > near > embedding)."""
    best: dict[tuple[int, int], tuple[int, str, float]] = {}
    for a, b, kind, s in pairs:
        key = (min(a, b), max(a, b))
        rank = KINDS.index(kind)
        if key not in best or best[key][0] > rank:
            best[key] = (rank, kind, s)
    uf = _UnionFind(len(m))
    for a, b in best:
        uf.union(a, b)
    roots = [uf.find(i) for i in range(len(m))]
    sizes = pd.Series(roots).value_counts()
    numbering = {r: n for n, r in enumerate(sorted(r for r, c in sizes.items() if c > 1))}
    m = m.copy()
    m["cluster"] = [numbering.get(r, -1) for r in roots]
    table = pd.DataFrame([(a, b, kind, s, m["cluster"].iloc[a]) for (a, b), (_, kind, s) in best.items()],
                         columns=["a", "b", "kind", "similarity", "cluster"])
    table = table.sort_values(["cluster", "a", "b"], kind="stable").reset_index(drop=True)
    return AuditResult(m, table, sides_from, threshold, skipped, embeddings)


def dedupe_groups(m: Manifest, result: AuditResult | None = None,
                  **audit_kwargs: Any) -> tuple[Manifest, int]:
    """Merge the ``group`` of every duplicate cluster so a grouped split keeps it on one side.

    Audits ``m`` (with ``audit_kwargs``) unless its ``result`` is given. Returns the manifest with
    merged groups (each merged group takes the smallest of its names) and how many clusters joined
    two or more groups. Rows the audit could not decode keep their group.
    """
    result = result if result is not None else audit(m, **audit_kwargs)
    groups = sorted(set(m["group"]))
    index = {g: i for i, g in enumerate(groups)}
    uf = _UnionFind(len(groups))
    merged = 0
    for c in result.clusters():
        gs = sorted(set(c["group"]))
        if len(gs) > 1:
            merged += 1
            for g in gs[1:]:
                uf.union(index[gs[0]], index[g])
    out = m.copy()
    out["group"] = [groups[uf.find(index[g])] for g in m["group"]]
    return out, merged


def thumbnails(paths: list[str], max_side: int = 128) -> dict[str, str]:
    """PNG data URIs of the given images for the report (unreadable ones are left out)."""
    from leukoscope.reports.html import image_to_data_uri

    out = {}
    for p in dict.fromkeys(paths):
        try:
            out[p] = image_to_data_uri(load_rgb(p), max_side)
        except ImageError:
            continue
    return out


def write_audit(result: AuditResult, out: Path, max_pairs: int = 300) -> tuple[Path, Path]:
    """Write ``audit.json`` (everything) and ``audit.html`` (pairs side by side) into ``out``."""
    from leukoscope import __version__
    from leukoscope.bundle import write_json
    from leukoscope.reports.html import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    json_path = out / "audit.json"
    write_json(json_path, data)
    records = sorted(data["pairs"], key=lambda r: (not r["label_conflict"], not r["cross_side"],
                                                   KINDS.index(r["kind"]), -r["similarity"]))
    shown = records[:max_pairs]
    thumbs = thumbnails([r[k]["path"] for r in shown for k in ("a", "b")])
    html_path = write_report(out / "audit.html", "audit.html", title="Data audit", protocol=None,
                             warning=None, summary=data["summary"], pairs=shown, thumbs=thumbs,
                             hidden=len(records) - len(shown), clusters=data["clusters"],
                             skipped=data["skipped"], name=lambda p: Path(p).name, version=__version__)
    return json_path, html_path
