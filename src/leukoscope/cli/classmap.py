"""``--class-map`` for train, benchmark and evaluate: map labels right after reading, say what it did."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape

from leukoscope.cli.app import console

if TYPE_CHECKING:  # pandas only once a command runs: ``--help`` stays instant
    from leukoscope.data.classmap import ClassMap
    from leukoscope.data.manifest import Manifest


def mapped(m: Manifest, spec: str | None) -> tuple[Manifest, ClassMap | None, dict[str, Any] | None]:
    """``m`` with the map of ``spec`` applied (unchanged without one), the map and what it did
    (``ClassMap.counts``); prints the cells mapped per common label and those left out."""
    from leukoscope.data.classmap import counts_line, load_class_map

    if spec is None:
        return m, None, None
    cmap = load_class_map(spec)
    out, dropped = cmap.apply(m)
    counts = cmap.counts(out, dropped)
    console.print(escape(counts_line(counts)), soft_wrap=True)
    return out, cmap, counts
