"""``--class-map`` for train, benchmark and evaluate: map labels right after reading, say what was dropped."""

from __future__ import annotations

from rich.markup import escape

from leukoscope.cli.app import console
from leukoscope.data.classmap import ClassMap, load_class_map
from leukoscope.data.manifest import Manifest


def mapped(m: Manifest, spec: str | None) -> tuple[Manifest, ClassMap | None]:
    """``m`` with the map of ``spec`` applied (unchanged without one) and the map; prints the drop counts."""
    if spec is None:
        return m, None
    cmap = load_class_map(spec)
    out, dropped = cmap.apply(m)
    if dropped:
        shown = ", ".join(f"{k} {v}" for k, v in dropped.items())
        console.print(
            escape(
                f"class map {cmap.source}: left out {sum(dropped.values())} cell(s) of types it "
                f"drops ({shown})"
            ),
            soft_wrap=True,
        )
    return out, cmap
