"""Duplicate pairs joined into clusters, and what a cluster means for the data.

Pairs are joined by union-find. A cluster with two labels is a label conflict (an unlabelled copy of a
labelled cell is not: it has no label to disagree with); one whose members sit on two sides of a split
(or of the data set's own train / test) is leakage; one that spans two groups (subjects) would let a
grouped split leak. Apart from clusters, the result lists the files of one patient filed under two labels
(``data.cohort.label_conflicts``: the same bytes in two cell-type folders).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from leukoscope.data.manifest import Manifest

#: Kinds of duplicate pair, most certain first: one pair of images keeps its most certain kind.
KINDS = ("exact", "near", "embedding")


class UnionFind:
    """Disjoint sets of ``0..n-1``; each set is named by its smallest member."""

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
    #: one row per file filed under two or more labels of one patient: subject, sha1, label, path
    filed_twice: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["subject", "sha1", "label", "path"]))

    def clusters(self) -> list[pd.DataFrame]:
        """The rows of each duplicate cluster (two or more images)."""
        m = self.manifest
        return [part for _, part in m[m["cluster"] >= 0].groupby("cluster", sort=True)]

    def label_conflicts(self) -> list[int]:
        """Clusters whose labelled members carry two or more labels."""
        return [int(c["cluster"].iloc[0]) for c in self.clusters()
                if c.loc[c["source_split"] != "unlabelled", "label"].nunique() > 1]

    def patient_conflicts(self) -> list[dict[str, Any]]:
        """Each file filed under two or more labels of one patient: subject, labels, paths."""
        return [{"subject": str(subject), "sha1": str(sha1), "labels": list(map(str, part["label"])),
                 "paths": list(map(str, part["path"]))}
                for (subject, sha1), part in self.filed_twice.groupby(["subject", "sha1"], sort=True)]

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
            "filed_under_two_labels": int(self.filed_twice.groupby(["subject", "sha1"]).ngroups),
            "patients_with_files_under_two_labels": int(self.filed_twice["subject"].nunique()),
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
                "label_conflict": ra["label"] != rb["label"] and "unlabelled" not in
                (ra["source_split"], rb["source_split"]),
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
            "filed_under_two_labels": self.patient_conflicts(),
            "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
        }


def _describe(row: pd.Series) -> dict[str, Any]:
    return {"path": row["path"], "label": row["label"], "group": row["group"],
            "subject": row["subject"], "side": None if row["side"] is None else str(row["side"])}


def assemble(m: Manifest, pairs: list[tuple[int, int, str, float]], sides_from: str | None,
             threshold: float, skipped: list[tuple[str, str]], embeddings: bool) -> AuditResult:
    """Cluster the pairs (union-find), keeping one pair per image pair (exact > near > embedding)."""
    best: dict[tuple[int, int], tuple[int, str, float]] = {}
    for a, b, kind, s in pairs:
        key = (min(a, b), max(a, b))
        rank = KINDS.index(kind)
        if key not in best or best[key][0] > rank:
            best[key] = (rank, kind, s)
    uf = UnionFind(len(m))
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
