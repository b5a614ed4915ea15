"""Selective classification: the risk-coverage curve of withholding the least trusted calls first.

Cells are accepted in order of a score (the bundle's unfamiliarity, and for comparison 1 - the top
calibrated probability); at coverage c the risk is the error rate among the accepted share c. The
area under the curve (AURC, lower is better; the mean risk over every coverage) and the accuracy at
90 % coverage summarise it; cells above the bundle's threshold are counted as flagged "unfamiliar".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leukoscope.models.unfamiliar import Scorer

#: Points kept of a curve in metrics.json (the figure needs no more).
CURVE_POINTS = 200


def risk_coverage(correct: np.ndarray, uncertainty: np.ndarray) -> dict[str, Any]:
    """Curve, AURC and accuracy at 90 % coverage when accepting the least uncertain cells first."""
    correct = np.asarray(correct, bool)
    n = len(correct)
    if n == 0:
        return {"aurc": None, "accuracy_at_90": None, "coverage": [], "risk": []}
    order = np.argsort(np.asarray(uncertainty, np.float64), kind="stable")
    errors = np.cumsum(~correct[order])
    accepted = np.arange(1, n + 1)
    risk = errors / accepted
    at90 = int(np.ceil(0.9 * n))
    keep = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).astype(int))
    return {"aurc": float(risk.mean()), "accuracy_at_90": float(1.0 - risk[at90 - 1]),
            "coverage": (accepted[keep] / n).round(4).tolist(), "risk": risk[keep].round(4).tolist()}


def coverage_section(y: np.ndarray, probs: np.ndarray, scores: np.ndarray | None,
                     scorer: Scorer | None, calls: np.ndarray | None = None) -> dict[str, Any]:
    """metrics.json's ``unfamiliar`` section: risk-coverage by confidence and by unfamiliarity, and
    how many cells the bundle's threshold flags (accuracy of the rest). ``calls``: the classes the bundle
    calls (``Bundle.decide``: an operating point's, not always the most probable); the risks are theirs."""
    calls = probs.argmax(axis=1) if calls is None else np.asarray(calls)
    correct = calls == np.asarray(y)
    out: dict[str, Any] = {"by_confidence": risk_coverage(correct, 1.0 - probs.max(axis=1))}
    if scorer is None or scores is None:
        out["note"] = "the bundle has no unfamiliarity score (written before scores existed)"
        return out
    flagged = scorer.flag(scores)
    kept = ~flagged
    out |= {"method": scorer.method, "threshold": scorer.threshold,
            "target_false_flag_rate": scorer.target, "flagged": int(flagged.sum()), "n": int(len(y)),
            "accuracy_unflagged": float(correct[kept].mean()) if kept.any() else None,
            "by_unfamiliarity": risk_coverage(correct, scores)}
    return out


def coverage_line(section: dict[str, Any]) -> str:
    """One line for the terminal: cells flagged, AURC and accuracy at 90 % coverage."""
    c = section.get("by_unfamiliarity") or section["by_confidence"]
    if c["aurc"] is None:
        return "risk-coverage: no cells"
    by = "unfamiliarity" if "by_unfamiliarity" in section else "confidence (no unfamiliarity score)"
    flagged = f"{section['flagged']} of {section['n']} cells unfamiliar; " if "flagged" in section else ""
    return (f"{flagged}risk-coverage by {by}: AURC {c['aurc']:.4f}, accuracy at 90% coverage "
            f"{c['accuracy_at_90']:.4f}")


def coverage_figure(section: dict[str, Any]) -> Any:
    """Risk against coverage, one line per ordering (drawn from metrics.json alone)."""
    from leukoscope.evaluate.figures import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, name in (("by_unfamiliarity", "unfamiliarity"), ("by_confidence", "1 - top probability")):
        c = section.get(key)
        if c and c["coverage"]:
            ax.plot(c["coverage"], c["risk"], label=f"{name} (AURC {c['aurc']:.3f})")
    ax.axvline(0.9, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("coverage (share of cells called)")
    ax.set_ylabel("risk (error rate of the calls made)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
