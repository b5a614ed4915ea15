"""Figures on the held-out sides, the same for every family: the temperature is fitted on the
validation side only, and the test side is scored with it once, at the end."""

from __future__ import annotations

from typing import Any

import numpy as np

from leukoscope.errors import DataError
from leukoscope.evaluate.calibration import fit_temperature
from leukoscope.evaluate.metrics import classification_metrics
from leukoscope.evaluate.operating import choose, evaluate_operating_point
from leukoscope.probability import softmax_t

#: The headline figures a run reports per side.
KEYS = ("n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc", "ece")


def scores(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The headline figures of ``probs`` against labels ``y``."""
    full = classification_metrics(y, probs, class_names)
    return {k: full[k] for k in KEYS}


def calibrated(logits: dict[str, np.ndarray], y: dict[str, np.ndarray], class_names: list[str]
               ) -> tuple[dict[str, Any], float, dict[str, np.ndarray]]:
    """Figures of the ``val`` / ``test`` logits present (as ``validation`` / ``test``, with the ECE
    before and after temperature scaling), the temperature (1 without a val side), the calibrated
    probabilities by side."""
    temperature = fit_temperature(logits["val"], y["val"]) if "val" in logits else 1.0
    metrics: dict[str, Any] = {}
    probs = {}
    for side, name in (("val", "validation"), ("test", "test")):
        if side not in logits:
            continue
        before = softmax_t(logits[side])
        after = softmax_t(logits[side], temperature)
        metrics[name] = {**scores(y[side], after, class_names),
                         "ece_before": scores(y[side], before, class_names)["ece"]}
        metrics[name]["ece_after"] = metrics[name].pop("ece")
        probs[side] = after
    return metrics, temperature, probs


def operating_point(positive: str | None, target_sensitivity: float | None, probs: dict[str, np.ndarray],
                    y: dict[str, np.ndarray], class_names: list[str], metrics: dict[str, Any]
                    ) -> dict[str, Any] | None:
    """The bundle's ``operating_point`` for ``positive`` (None without one), chosen on the validation
    side's calibrated ``probs``; ``metrics`` gets it, with the test side's sensitivity and specificity
    at that threshold."""
    if positive is None:
        return None
    if "val" not in probs:
        raise DataError(f"--positive {positive}: no validation side to choose the threshold on")
    op = choose(y["val"], probs["val"], class_names, positive, target_sensitivity)
    metrics["operating_point"] = dict(op)
    if "test" in probs:
        metrics["operating_point"]["test"] = evaluate_operating_point(op, y["test"], probs["test"],
                                                                      class_names)
    return op
