"""The audit of a manifest: its duplicate pairs, each row's side, and groups merged over copies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from leukoscope.audit.clusters import AuditResult, UnionFind, assemble
from leukoscope.audit.search import cosine_pairs, nearest
from leukoscope.audit.signatures import Signature, signatures, verify
from leukoscope.data.cohort import label_conflicts
from leukoscope.data.manifest import Manifest
from leukoscope.data.splits import resolve_paths
from leukoscope.errors import ConfigError, DataError
from leukoscope.progress import SILENT, Progress

if TYPE_CHECKING:
    from leukoscope.data.splits import Split

#: Default minimum detail correlation (0..1) for a verified near-duplicate.
THRESHOLD = 0.85
#: Default minimum cosine of deep embeddings for an embedding pair (with ``embeddings``).
EMBED_THRESHOLD = 0.97
_CANDIDATE_MIN = 0.4  # stage-1 cosine below which a neighbour is not worth verifying


def _sides(m: Manifest, split: Split | None) -> tuple[list[Any], str | None]:
    """Side of each row: from the split (side or fold), else the data set's own partition.

    The own partition is the source split, with the data set's name when several are audited
    together and its official fold where it has one (C-NMC's fold_0..2 are meant for CV).
    """
    if split is not None:
        col = "side" if "side" in split else "fold" if "fold" in split else None
        if col is None:
            raise ConfigError("the split has neither a 'side' nor a 'fold' column")
        # the split's paths matched to the images as every other command matches them (a relative path by
        # its tail): compared as strings, a split of relative paths gave no image a side, and no leak. It
        # may name more images than are audited; naming none of them is a wrong split, not a clean one.
        resolved = resolve_paths(split["path"].astype(str), m["path"].astype(str))
        if len(split) and all(r is None for r in resolved):
            raise DataError(f"{split.attrs.get('source', '--split')}: names none of the images given "
                            f"(e.g. {split['path'].iloc[0]})")
        lookup = dict(zip(resolved, split[col], strict=True))
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


def _embedding_pairs(embeddings: pd.DataFrame, labels: list[Any], rows: list[int],
                     min_cos: float) -> list[tuple[int, int, float]]:
    """Pairs of ``rows`` whose embeddings have cosine ``>= min_cos``; row ``r``'s embedding is
    ``embeddings``' row labelled ``labels[r]`` (rows without one are left out)."""
    kept = [r for r in rows if labels[r] in embeddings.index]
    x = embeddings.loc[[labels[r] for r in kept]].to_numpy(np.float32, copy=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-9
    return [(kept[i], kept[j], s) for i, j, s in cosine_pairs(x, min_cos)]


def audit(m: Manifest, split: Split | None = None, *, threshold: float = THRESHOLD,
          neighbours: int = 3, embeddings: pd.DataFrame | None = None,
          embed_threshold: float = EMBED_THRESHOLD, n_jobs: int = -1,
          progress: Progress = SILENT) -> AuditResult:
    """Find exact and near duplicates in ``m``, and files filed under two labels of one patient
    (``data.cohort.label_conflicts``); sides come from ``split`` or the source splits.

    ``threshold`` is the minimum detail correlation of a near pair; each image's ``neighbours``
    most similar signatures are verified. Unreadable images are skipped and listed. Signatures
    are computed in ``n_jobs`` worker processes (joblib's convention) once there are enough images.
    ``embeddings`` (one row per image, indexed like ``m``, e.g. the ``deep`` feature kind's) adds
    pairs whose cosine is at least ``embed_threshold``; the caller computes them, so the audit
    needs no model.
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"--threshold must be in (0, 1], got {threshold}")
    sigs: list[Signature] = []
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    advance = progress.task("hashing", len(m))
    for i, (p, sig) in enumerate(zip(m["path"], signatures(list(m["path"]), n_jobs, advance), strict=True)):
        if isinstance(sig, str):
            skipped.append((p, sig))
        else:
            sigs.append(sig)
            keep.append(i)
    progress.done("hashing")
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
        for a, b, _, view in nearest(x, neighbours, _CANDIDATE_MIN):  # a under view is most like b
            score = verify(sigs[reps[b]], sigs[reps[a]], view)
            if score >= threshold:
                pairs.append((min(reps[a], reps[b]), max(reps[a], reps[b]), "near", score))
        if embeddings is not None:
            labels = list(m.index[keep])
            pairs += [(a, b, "embedding", s)
                      for a, b, s in _embedding_pairs(embeddings, labels, reps, embed_threshold)]
    result = assemble(out, pairs, sides_from, threshold, skipped, embeddings is not None)
    result.filed_twice = label_conflicts(m)
    return result


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
    uf = UnionFind(len(groups))
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
