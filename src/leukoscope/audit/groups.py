"""The default grouping of every split: subjects merged with the audit's duplicate clusters.

A near-copy of a training cell on the test side inflates every figure whatever the subject ids say,
so ``dedupe`` audits the rows (``audit.audit``, its public entry) and merges the groups of each
duplicate cluster (union-find) before any command splits them. The clusters are cached on disk,
keyed by the files' contents (SHA-1 of each file, as the feature cache), the audit's settings and
the audit's own code, so a second command on the same images pays only for hashing the files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from leukoscope.audit.clusters import UnionFind
from leukoscope.audit.find import THRESHOLD, audit
from leukoscope.data.images import readable_digest
from leukoscope.data.manifest import Manifest
from leukoscope.data.splits import mark_dedupe
from leukoscope.io import write_json_atomic
from leukoscope.progress import SILENT, Progress

_CODE = ("find.py", "signatures.py", "search.py", "clusters.py")  # a change to any of these re-audits


def _key(digests: list[str]) -> str:
    """Content address of an audit: the sorted file digests, the threshold and the audit's code."""
    h = hashlib.sha1(f"threshold={THRESHOLD}\n".encode())
    here = Path(__file__).parent
    for name in _CODE:
        h.update((here / name).read_bytes())
    h.update("\n".join(sorted(digests)).encode())
    return h.hexdigest()


def duplicate_clusters(m: Manifest, *, cache: Path | None = None, progress: Progress = SILENT
                       ) -> list[list[int]]:
    """Row positions of ``m`` in each duplicate cluster the audit finds (two or more rows).

    Cached under ``<cache>/audit/`` as clusters of file digests (``cache`` defaults to the feature
    cache's folder, ``settings.cache_dir()``); unreadable files are in no cluster.
    """
    from leukoscope.settings import cache_dir

    # an unreadable file keys on its path alone: it is in no cluster
    digests = [readable_digest(p) or f"unreadable:{p}" for p in m["path"]]
    file = (Path(cache) if cache is not None else cache_dir()) / "audit" / f"{_key(digests)}.json"
    try:
        stored: list[list[str]] = json.loads(file.read_text())["clusters"]
    except (OSError, ValueError, KeyError, TypeError):
        result = audit(m.reset_index(drop=True), progress=progress)
        at = {p: i for i, p in enumerate(m["path"])}
        stored = [sorted({digests[at[p]] for p in c["path"]}) for c in result.clusters()]
        file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(file, {"clusters": stored})
    where = {d: n for n, c in enumerate(stored) for d in c}
    rows: dict[int, list[int]] = {}
    for i, d in enumerate(digests):
        if d in where:
            rows.setdefault(where[d], []).append(i)
    return [r for r in rows.values() if len(r) > 1]


def dedupe(m: Manifest, *, cache: Path | None = None, progress: Progress = SILENT) -> tuple[Manifest, int]:
    """``m`` with the groups of each duplicate cluster merged (the merged group keeps the smallest
    name) and ``dedupe`` True; and how many clusters joined two or more groups."""
    groups = sorted(set(m["group"]))
    index = {g: i for i, g in enumerate(groups)}
    uf = UnionFind(len(groups))
    merged = 0
    for rows in duplicate_clusters(m, cache=cache, progress=progress):
        gs = sorted({index[g] for g in m["group"].iloc[rows]})
        merged += len(gs) > 1
        for g in gs[1:]:
            uf.union(gs[0], g)
    out = m.assign(group=[groups[uf.find(index[g])] for g in m["group"]])
    return mark_dedupe(out, True), merged


def grouped(m: Manifest, on: bool, *, cache: Path | None = None, progress: Progress = SILENT) -> Manifest:
    """The rows a split groups: duplicates merged into their subjects' groups when ``on`` (the
    default of every command), else as read, marked so that every summary says so."""
    return dedupe(m, cache=cache, progress=progress)[0] if on else mark_dedupe(m, False)
