"""Operating points: the decision threshold of a positive class, chosen on validation, and the
sensitivity and specificity it gives.

A binary (or one-vs-rest) screen is judged at a fixed sensitivity, not at argmax: ``choose`` picks
the threshold on the validation side's calibrated probability of the positive class, either the
highest one reaching ``target_sensitivity`` or, without a target, the one maximising Youden's J
(sensitivity + specificity - 1), placed halfway between that score and the next lower one.
Training stores the result as the bundle's ``operating_point``; ``probability.decide`` applies it in
predict, serve and evaluate alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from leukoscope.errors import ConfigError, DataError
from leukoscope.evaluate.intervals import bootstrap, subject_groups, wilson
from leukoscope.probability import decide


def check_positive(positive: str, classes: Sequence[str]) -> int:
    """The index of ``positive`` among ``classes``; a ``ConfigError`` naming the setting otherwise."""
    if positive not in classes:
        raise ConfigError(f"--positive {positive!r}: not one of the classes ({', '.join(classes)})")
    return list(classes).index(positive)


def choose(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: str,
           target_sensitivity: float | None = None) -> dict[str, Any]:
    """The operating point for ``positive`` on labels ``y`` / calibrated ``probs`` (validation side):
    ``positive``, ``threshold``, ``rule`` and the ``val_sensitivity`` / ``val_specificity`` it gives."""
    from sklearn.metrics import roc_curve

    k = check_positive(positive, classes)
    pos = np.asarray(y) == k
    if pos.all() or not pos.any():
        raise DataError(f"--positive {positive}: the validation side needs cells of {positive} and of "
                        "other classes to choose a threshold")
    fpr, tpr, scores = roc_curve(pos, np.asarray(probs, np.float64)[:, k], drop_intermediate=False)
    scores = np.minimum(scores, 1.0)  # every distinct score, falling; the first is +inf: nothing positive
    if target_sensitivity is None:
        i, rule = int(np.argmax(tpr - fpr)), "youden"
    else:  # scores fall as tpr rises: the first reaching the target is the highest one
        i, rule = int(np.argmax(tpr >= target_sensitivity)), f"sensitivity>={target_sensitivity:g}"
    # halfway to the next lower score: the same validation calls, with a margin on either side (at the
    # score itself, a calibrated model's saturated 0.9999999 would become the threshold)
    threshold = (scores[i] + (scores[i + 1] if i + 1 < len(scores) else 0.0)) / 2
    op: dict[str, Any] = {"positive": positive, "threshold": float(threshold), "rule": rule}
    figures = sensitivity_specificity(y, decide(probs, classes, op), k)
    return op | {"val_sensitivity": figures["sensitivity"]["value"],
                 "val_specificity": figures["specificity"]["value"], "val_n": int(len(pos))}


def sensitivity_specificity(y: np.ndarray, called: np.ndarray, k: int,
                            subjects: Sequence[Any] | None = None, seed: int = 0, n: int = 1000
                            ) -> dict[str, dict[str, Any]]:
    """Sensitivity (positives called ``k``) and specificity (others not called ``k``), each with its
    count, a Wilson interval over cells and, where subjects are known, a subject-bootstrap interval."""
    pos, hit = np.asarray(y) == k, np.asarray(called) == k
    groups = subject_groups(subjects, len(pos))
    out = {}
    for name, rows, ok in (("sensitivity", pos, hit), ("specificity", ~pos, ~hit)):
        n_rows, n_ok = int(rows.sum()), int((rows & ok).sum())
        wil = wilson(n_ok, n_rows)
        fig: dict[str, Any] = {"value": n_ok / n_rows if n_rows else None, "n": n_rows,
                               "ci95_wilson": None if wil is None else list(wil)}
        if groups is not None:
            ci = bootstrap(partial(_share, rows, ok), groups, seed, n)
            fig["ci95_subjects"] = None if ci is None else list(ci)
        out[name] = fig
    return out


def _share(rows: np.ndarray, ok: np.ndarray, draw: np.ndarray) -> float | None:
    """The fraction of the drawn ``rows`` that are ``ok`` (None when none is drawn)."""
    n = int(rows[draw].sum())
    return float((rows[draw] & ok[draw]).sum() / n) if n else None


def evaluate_operating_point(op: dict[str, Any], y: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                             subjects: Sequence[Any] | None = None) -> dict[str, Any]:
    """Sensitivity and specificity of the bundle's stored ``op`` on these labels, the positive class named."""
    k = check_positive(op["positive"], classes)
    rest = [c for c in classes if c != op["positive"]]
    return {"positive": op["positive"], "negative": " / ".join(rest), "threshold": op["threshold"],
            "rule": op.get("rule"),
            **sensitivity_specificity(y, decide(probs, classes, op), k, subjects)}


def describe(r: dict[str, Any]) -> list[str]:
    """Lines for a text report: ``sensitivity for all (threshold ...): 0.95 [0.90, 0.98]``."""
    lines = []
    for name in ("sensitivity", "specificity"):
        f = r[name]
        if f["value"] is None:
            continue
        ci = f.get("ci95_subjects") or f["ci95_wilson"]
        how = "subject bootstrap" if f.get("ci95_subjects") else "Wilson"
        lines.append(f"{name} for {r['positive']} at p >= {r['threshold']:.4g}: {f['value']:.3f} "
                     f"[{ci[0]:.2f}, {ci[1]:.2f}] ({how}, {f['n']} cells)")
    return lines
