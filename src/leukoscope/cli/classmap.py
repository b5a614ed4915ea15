"""``--class-map`` for train, benchmark and evaluate: map labels right after reading, say what it did.

Evaluate without ``--class-map`` reuses the map a bundle was trained with (``train --class-map`` records
its content), so scoring a model of one lab on another's cells does not repeat the map."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape

from leukoscope.cli.app import console, say

if TYPE_CHECKING:  # pandas only once a command runs: ``--help`` stays instant
    from leukoscope.data.classmap import ClassMap
    from leukoscope.data.manifest import Manifest


def mapped(m: Manifest, spec: str | None, recorded: dict[str, Any] | None = None,
           recorded_by: str = "the bundle was trained with"
           ) -> tuple[Manifest, ClassMap | None, dict[str, Any] | None]:
    """``m`` with the map of ``spec`` applied (unchanged without one), the map and what it did
    (``ClassMap.counts``); prints the cells mapped per common label and those left out.

    ``recorded`` is the map of ``recorded_by`` (a bundle's config: the map it was trained with; a run's
    config.yaml given to train --config): used when ``spec`` is None, and a ``spec`` that maps labels
    otherwise is said to win over it (one line each)."""
    from leukoscope.data.classmap import counts_line, from_json, load_class_map

    own = None if recorded is None else from_json(recorded, f"the class map {recorded_by}")
    if spec is not None:
        cmap = load_class_map(spec)
        if own is not None and not cmap.same_labels(own):
            say(f"class map: --class-map {spec} differs from the one {recorded_by} ({own.source}); "
                f"using --class-map {spec}")
    elif own is not None:
        cmap = own
        say(f"class map: none given, so the one {recorded_by} ({own.source})")
    else:
        return m, None, None
    out, dropped = cmap.apply(m)
    counts = cmap.counts(out, dropped)
    console.print(escape(counts_line(counts)), soft_wrap=True)
    return out, cmap, counts
