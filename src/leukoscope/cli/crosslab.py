"""``evaluate --class-map``: the bundle's own held-out figures (its lab) beside those on the mapped data."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import console


def print_side_by_side(c: dict[str, Any]) -> None:
    """Print evaluate's ``crosslab`` section: in-lab (the bundle's held-out side) vs these data, by figure."""
    table = Table(title=escape(f"{c['in_lab_label']} vs cross-lab (these {c['evaluated']} images)"))
    for col in ("figure", "in-lab", "these data"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    for k in c["figures"]:
        table.add_row(k, *(f"{d[k]:.4f}" if isinstance(d.get(k), float) else "-"
                           for d in (c["in_lab"], c["these_data"])))
    console.print(table)
