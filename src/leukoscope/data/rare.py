"""Classes too rare to learn: merged into one ``other`` class or left out, with a record of which.

A cell-type data set is long-tailed (DeepAPL: 18 types from 1 to 472 cells). A type with a handful of
cells cannot be learnt, and under grouped K-fold its test folds hold a cell or two, or none: its F1 is
noise, and a type seen in fewer patients than folds cannot even be split. ``rare_classes`` handles such
types once, before any split: their cells join one ``other`` class (``how="other"``) or are left out
(``how="drop"``), and its ``RareReport`` names each type with its cell count, so every output can say
what was learnt and scored.

The threshold counts labelled cells. ``MIN_CELLS`` = 30: with 5 folds that is about 6 cells per test
fold, about the fewest that make a per-class recall more than a coin toss, and the issue's own bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from leukoscope.errors import ConfigError

if TYPE_CHECKING:  # pandas: not when a bundle's config is checked at every predict start
    from leukoscope.data.manifest import Manifest

#: The class that rare types join with ``how="other"``.
OTHER = "other"
#: What happens to a rare type's cells.
HOW = ("other", "drop")
#: Default threshold (cells of a class), see the module docstring.
MIN_CELLS = 30


@dataclass(frozen=True)
class RareReport:
    """Which classes were too rare (fewer than ``min_cells`` labelled cells) and what became of them.

    ``done`` is ``"other"`` (merged), ``"drop"`` (left out) or ``None`` (nothing changed); ``note``
    says why when it differs from what was asked (``how``).
    """

    min_cells: int
    how: str
    types: dict[str, int] = field(default_factory=dict)
    done: str | None = None
    note: str | None = None

    @property
    def cells(self) -> int:
        """Cells of the rare types, together."""
        return sum(self.types.values())

    def to_json(self) -> dict[str, Any]:
        return {"min_cells": self.min_cells, "how": self.how, "done": self.done, "types": self.types,
                "cells": self.cells, "note": self.note}

    @classmethod
    def from_json(cls, info: dict[str, Any]) -> RareReport:
        """The report a run recorded (``to_json``: a bundle's ``rare_classes``)."""
        types = {str(k): int(v) for k, v in info["types"].items()}
        return cls(int(info["min_cells"]), str(info["how"]), types, info.get("done"), info.get("note"))

    def line(self) -> str | None:
        """One sentence for a CLI, report or model card; None when no class was rare."""
        if not self.types:
            return None
        listed = ", ".join(f"{t} ({n})" for t, n in self.types.items())
        what = {"other": f"merged into {OTHER!r}", "drop": "left out"}.get(self.done or "", "kept")
        text = (f"{len(self.types)} class(es) with fewer than {self.min_cells} cells {what}: {listed}; "
                f"{self.cells} cells")
        return f"{text} ({self.note})" if self.note else text


def check_rare(min_cells: Any, how: Any) -> None:
    """One error naming the setting when ``min_cells`` or ``how`` cannot be used."""
    if type(min_cells) is not int or min_cells < 0:
        raise ConfigError(f"--min-cells must be a whole number >= 0 (0: keep every class), got {min_cells!r}")
    if how not in HOW:
        raise ConfigError(f"--rare must be one of {', '.join(HOW)}, got {how!r}")


def rare_classes(m: Manifest, min_cells: int | None = None, how: str | None = None
                 ) -> tuple[Manifest, RareReport]:
    """``m`` with the classes of fewer than ``min_cells`` (None: ``MIN_CELLS``) labelled cells merged
    into ``other`` or dropped (``how``, None: ``other``).

    Nothing changes when fewer than two classes reach the threshold (a small data set, a binary task):
    there would be nothing left to tell apart. A merged ``other`` that would itself fall short of the
    threshold is dropped instead. Unlabelled rows are kept as they are (they are never scored as
    cells). Merged rows keep their own class in an ``original_label`` column.
    """
    min_cells = MIN_CELLS if min_cells is None else min_cells
    how = how or "other"
    check_rare(min_cells, how)
    counts = m.loc[m["source_split"] != "unlabelled", "label"].value_counts().sort_index()
    rare = {str(c): int(n) for c, n in counts.items() if n < min_cells}
    report = RareReport(min_cells, how, rare)
    if not rare:
        return m, report
    if len(counts) - len(rare) < 2:
        return m, RareReport(min_cells, how, rare, None,
                             f"fewer than two classes have {min_cells} cells; nothing merged or left out")
    done, note = how, None
    joined = sum(rare.values()) + (0 if OTHER in rare else int(counts.get(OTHER, 0)))  # an existing 'other'
    if how == "other" and joined < min_cells:
        done, note = "drop", f"together they have fewer than {min_cells} cells, so they were left out"
    report = RareReport(min_cells, how, rare, done, note)
    return apply_rare(m, report), report


def as_trained(m: Manifest, config: dict[str, Any]) -> Manifest:
    """``m`` with the classes of the model whose config.json is ``config``: the rare classes its training
    merged or dropped (``rare_classes``) merged or dropped here too."""
    recorded = config.get("rare_classes")
    return apply_rare(m, RareReport.from_json(recorded) if recorded else None)


def apply_rare(m: Manifest, report: RareReport | None) -> Manifest:
    """What ``report`` did to its rows, done to ``m`` (a trained model's classes on the data it is
    evaluated on): its rare classes' labelled rows merged into ``other`` or dropped."""
    if report is None or report.done not in HOW:
        return m
    is_rare = m["label"].isin(list(report.types)) & (m["source_split"] != "unlabelled")
    if report.done == "drop":
        return m[~is_rare].reset_index(drop=True)
    return m.assign(original_label=m["label"], label=m["label"].mask(is_rare, OTHER))

