"""Rendering an operating point and the too-small flag (train, evaluate): one place, so both say it alike."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from leukoscope.cli.app import console


def print_operating_point(op: dict[str, Any] | None) -> None:
    """The chosen threshold (train) and, where measured, its sensitivity and specificity."""
    if not op:
        return
    pos = op["positive"]
    console.print(escape(f"operating point: {pos} when p({pos}) >= {op['threshold']:.4g} "
                         f"({op['rule']} on validation: sensitivity {op['val_sensitivity']:.3f}, "
                         f"specificity {op['val_specificity']:.3f}, {op['val_n']} cells)"), soft_wrap=True)
    if "test" in op:
        print_decision(op["test"], "test side")


def print_decision(r: dict[str, Any], where: str) -> None:
    """Sensitivity and specificity at the stored threshold, with their intervals, the positive class named."""
    from leukoscope.evaluate.operating import describe

    for line in describe(r):
        console.print(escape(f"{where}: {line}"), soft_wrap=True)
