"""In-lab vs cross-lab: the bundle's own held-out figures (its metrics.json) beside this evaluation's.

``evaluate --class-map`` scores a model on another lab's cells. A cross-lab figure alone does not say how
much was lost; beside it, the figure the model reached on its own lab's held-out side (the test side, scored
once at training; the validation side when it had no test side), and what the map did to the new data (cells
mapped per common label, cells of types it left out, which no figure here covers).
"""

from __future__ import annotations

from typing import Any

#: The figures shown side by side (both metrics.json files carry them).
KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted")
#: metrics.json keys of the bundle's held-out sides, best first, and the side each names.
HELD_OUT = (("test", "test"), ("validation", "val"))


def crosslab_section(trained: dict[str, Any], here: dict[str, Any], evaluated: dict[str, int],
                     class_map: dict[str, Any]) -> dict[str, Any]:
    """The ``crosslab`` part of evaluate's metrics.json: in-lab figures from the bundle's ``trained``
    metrics (the side named, with its image count), cross-lab ones from ``here`` (the cell-level figures of
    this evaluation, on the ``evaluated`` images per label), and ``class_map`` (``ClassMap.counts``: what
    the map did to every image given, before a side, rare classes or unreadable files took some out)."""
    found = next(((key, side) for key, side in HELD_OUT if isinstance(trained.get(key), dict)), None)
    inlab = trained[found[0]] if found else {}
    side = found[1] if found else None
    images = trained.get("sides", {}).get(side) if side else None
    return {
        "figures": list(KEYS),
        "in_lab": {k: inlab.get(k) for k in KEYS},
        "in_lab_side": side,
        "in_lab_images": images,
        "in_lab_label": _in_lab_label(side, images),
        "in_lab_protocol": trained.get("protocol"),
        "these_data": {k: here.get(k) for k in KEYS},
        "evaluated": sum(evaluated.values()),
        "evaluated_by_label": evaluated,
        "class_map": class_map,
    }


def _in_lab_label(side: str | None, images: int | None) -> str:
    """Where the in-lab figures come from, in words (terminal and report)."""
    if side is None:
        return "in-lab (the bundle has no held-out figures)"
    return f"in-lab (its {side} side" + (f", {images} images)" if images is not None else ")")
