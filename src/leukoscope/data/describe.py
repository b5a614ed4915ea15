"""What is in a data set: counts per class, subject and source split, image sizes, bad files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leukoscope.data.images import probe
from leukoscope.data.manifest import Manifest, is_synthetic, protocol, warnings_for
from leukoscope.errors import ImageError


def _subjects(part: Manifest) -> list[str]:
    return sorted(part["subject"].dropna().unique(), key=lambda s: (len(s), s))


def describe(m: Manifest, on_image: Callable[[], None] | None = None) -> dict[str, Any]:
    """A JSON-ready summary of a manifest; every image is decoded once to find bad files."""
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    unreadable = []
    for p in m["path"]:
        try:
            w, h, mode = probe(p)
            sizes[f"{w}x{h}"] += 1
            modes[mode] += 1
        except ImageError as e:
            unreadable.append({"path": p, "reason": str(e).removeprefix(f"{p}: ")})
        if on_image:
            on_image()
    splits: dict[str, Any] = {}
    for split_name, part in m.groupby("source_split", sort=True):
        per_class = {}
        for label, rows in part.groupby("label", sort=True):
            subj = _subjects(rows)
            per_class[label or "(unlabelled)"] = {
                "images": int(len(rows)), "subjects": len(subj), "subject_ids": subj,
            }
        entry: dict[str, Any] = {"images": int(len(part)), "classes": per_class}
        if "original_name" in part:
            renamed = part[part["original_name"].notna()
                           & (part["original_name"] != part["path"].map(lambda p: Path(p).name))]
            if len(renamed):
                entry["original_names"] = {Path(p).name: o for p, o in
                                           zip(renamed["path"], renamed["original_name"],
                                               strict=True)}
        splits[str(split_name)] = entry
    out: dict[str, Any] = {
        "datasets": sorted(set(m.get("dataset", []))),
        "layouts": sorted(set(m.get("layout", []))),
        "images": int(len(m)),
        "protocol": protocol(m),
        "subjects": int(m["subject"].nunique()),
        "source_splits": splits,
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "unreadable": unreadable,
        "synthetic": is_synthetic(m),
    }
    warning = warnings_for(m)
    if warning:
        out["warning"] = warning
    return out

