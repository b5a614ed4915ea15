"""``PatientCall``: what a patient bundle says about one patient, in a form a report can show.

The patient's calibrated log-odds is ``sum(cell.weight * cell.log_odds)`` over the cells used, so each
cell's ``contribution`` (weight x log-odds) says how far it pushed the call and the list sorted by it
shows the cells that drove the call.

Unfamiliar cells (unlike the training cohort's cells by the bundle's unfamiliarity score) are
listed in ``cells`` with weight and contribution 0 and are left out of the call: a cell-log-odds model
extrapolates on them (a cell of another lab, stain or disease gets a log-odds the training never checked),
and one such cell can move a mean of a few tens of cells past the threshold. Leaving them out keeps the
call resting on cells of the kind it was validated on; the report says how many were left out
(``unfamiliar_note``), and warns when they are so many (``HIGH_UNFAMILIAR``) that the folder itself
probably differs from the training cohort (another lab, stain or scanner) and the rest is suspect too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: Share of a patient's cells flagged unfamiliar above which the report warns about the whole folder:
#: five times the ~5 % of familiar cells the threshold flags by design (30 familiar cells: P(>= 8 of 30
#: flagged) < 0.001).
HIGH_UNFAMILIAR = 0.25


@dataclass
class CellEvidence:
    """One cell of the patient: its calibrated log-odds toward the positive class as a bag of one cell,
    its weight in the bag, their product, and the cell type the bundle's cell-type head predicts."""

    path: str
    log_odds: float
    weight: float
    contribution: float
    cell_type: str
    cell_type_probability: float
    #: the bundle's unfamiliarity score (higher = less like the training cohort's cells); None: no score
    unfamiliarity: float | None = None
    #: above the score's threshold: left out of the call (weight and contribution 0)
    unfamiliar: bool = False


@dataclass
class PatientCall:
    subject: str | None
    model: str
    target: str
    classes: list[str]
    positive: str
    #: calibrated probability of ``positive`` (Platt scaling fitted on inner-CV scores); NaN when no cell
    #: is left to call from (every readable cell unfamiliar)
    probability: float
    #: 95% interval on ``probability``
    interval: tuple[float, float]
    interval_method: str
    #: probability at or above which the call is ``positive`` (fixed on the training folds)
    threshold: float
    #: ``positive`` or the other class; None when ``too_few``
    call: str | None
    too_few: bool
    min_cells: int
    cells: list[CellEvidence] = field(default_factory=list)
    #: (path, reason) of each input not used: unreadable, or a byte copy of another input
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: the bundle scores unfamiliarity (bundles written before it do not: no cell is then flagged)
    unfamiliar_checked: bool = False

    @property
    def used(self) -> list[CellEvidence]:
        """The cells the call rests on: every readable cell but the unfamiliar ones."""
        return [c for c in self.cells if not c.unfamiliar]

    @property
    def cells_used(self) -> int:
        return len(self.used)

    @property
    def cells_unfamiliar(self) -> int:
        return len(self.cells) - self.cells_used

    @property
    def unfamiliar_share(self) -> float:
        """Share of the readable cells flagged unfamiliar (0 without cells or without a score)."""
        return self.cells_unfamiliar / len(self.cells) if self.cells else 0.0

    def unfamiliar_note(self) -> str | None:
        """The unfamiliar cells in words (None when the bundle has no score or none was flagged)."""
        if not self.cells_unfamiliar:
            return None
        n, k = len(self.cells), self.cells_unfamiliar
        note = f"{k} of {n} cells unlike the training cohort's; "
        note += f"the call rests on {n - k}" if n > k else "no cell is left to make a call"
        if self.unfamiliar_share > HIGH_UNFAMILIAR:
            note += (f" (over {HIGH_UNFAMILIAR:.0%} unfamiliar: this folder may come from another lab, stain "
                     "or scanner than the training cohort; check it before trusting any call)")
        return note

    def composition(self) -> dict[str, int]:
        """Predicted cell types of the cells used, counted (most frequent first)."""
        counts: dict[str, int] = {}
        for c in self.used:
            counts[c.cell_type] = counts.get(c.cell_type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def drivers(self, n: int = 8) -> list[CellEvidence]:
        """The ``n`` cells that pushed hardest toward the call (or toward positive when there is none)."""
        sign = -1.0 if self.call is not None and self.call != self.positive else 1.0
        return sorted(self.used, key=lambda c: -sign * c.contribution)[:n]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = list(self.interval)
        if math.isnan(self.probability):  # no cell left to call from: JSON has no NaN
            out["probability"], out["interval"] = None, None
        out["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        out["cells_used"] = self.cells_used
        out["cells_unfamiliar"] = self.cells_unfamiliar
        out["unfamiliar_share"] = self.unfamiliar_share
        out["unfamiliar_note"] = self.unfamiliar_note()
        out["composition"] = self.composition()
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
