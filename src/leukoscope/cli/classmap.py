"""``--class-map`` for train, benchmark and evaluate: map labels right after reading, say what was dropped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape

from leukoscope.cli.app import console

if TYPE_CHECKING:  # pandas only once a command runs: ``--help`` stays instant
    from leukoscope.data.classmap import ClassMap
    from leukoscope.data.manifest import Manifest


def mapped(m: Manifest, spec: str | None) -> tuple[Manifest, ClassMap | None]:
    """``m`` with the map of ``spec`` applied (unchanged without one) and the map; prints the drop counts."""
    from leukoscope.data.classmap import load_class_map

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
