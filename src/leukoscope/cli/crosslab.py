"""``evaluate --class-map``: the bundle's own held-out figures (its lab) beside those on the mapped data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from leukoscope.cli.app import console
from leukoscope.io import write_json_atomic

CROSSLAB_FILE = "crosslab.json"
KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted")


def print_side_by_side(trained: dict[str, Any], r: dict[str, Any], out: Path) -> None:
    """Print and write (``crosslab.json``) in-lab (the bundle's test side) vs these data, figure by figure."""
    inlab = trained.get("test", {})
    here = r["cell"]
    table = Table(title="in-lab (its test side) vs cross-lab")
    for col in ("figure", "in-lab", "these data"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    for k in KEYS:
        table.add_row(k, *(f"{d[k]:.4f}" if isinstance(d.get(k), float) else "-" for d in (inlab, here)))
    console.print(table)
    write_json_atomic(
        Path(out) / CROSSLAB_FILE,
        {
            "in_lab": {k: inlab.get(k) for k in KEYS},
            "these_data": {k: here.get(k) for k in KEYS},
            "in_lab_protocol": trained.get("protocol"),
            "evaluated": r["evaluated"],
        },
    )
