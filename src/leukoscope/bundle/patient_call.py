"""``PatientCall``: what a patient bundle says about one patient, in a form a report can show.

The patient's calibrated log-odds is ``sum(cell.weight * cell.log_odds)`` over the cells used, so each
cell's ``contribution`` (weight x log-odds) says how far it pushed the call and the list sorted by it
shows the cells that drove the call.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


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


@dataclass
class PatientCall:
    subject: str | None
    model: str
    target: str
    classes: list[str]
    positive: str
    #: calibrated probability of ``positive`` (Platt scaling fitted on inner-CV scores)
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

    @property
    def cells_used(self) -> int:
        return len(self.cells)

    def composition(self) -> dict[str, int]:
        """Predicted cell types of the cells used, counted (most frequent first)."""
        counts: dict[str, int] = {}
        for c in self.cells:
            counts[c.cell_type] = counts.get(c.cell_type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def drivers(self, n: int = 8) -> list[CellEvidence]:
        """The ``n`` cells that pushed hardest toward the call (or toward positive when there is none)."""
        sign = -1.0 if self.call is not None and self.call != self.positive else 1.0
        return sorted(self.cells, key=lambda c: -sign * c.contribution)[:n]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = list(self.interval)
        out["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        out["cells_used"] = self.cells_used
        out["composition"] = self.composition()
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
