"""Temperature scaling (Guo et al., ICML 2017) and expected calibration error.

One scalar T divides the logits before the softmax; it is fitted on the validation side by
minimising the negative log-likelihood, never on the test side, and does not change the argmax.
Applying it is ``leukoscope.probability.softmax_t``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of integer labels ``y``."""
    lp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-lp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising validation NLL (1.0 when there is nothing to fit)."""
    y = np.asarray(y, int)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: confidence-vs-accuracy gap over equal-width bins, weighted."""
    probs = np.asarray(probs, np.float64)
    y = np.asarray(y, int)
    if len(y) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Per-bin mean confidence, accuracy and count, for a reliability diagram."""
    probs = np.asarray(probs, np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y, int)
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    return [
        {"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int((bins == b).sum()),
         "confidence": float(conf[bins == b].mean()) if (bins == b).any() else None,
         "accuracy": float(correct[bins == b].mean()) if (bins == b).any() else None}
        for b in range(n_bins)
    ]
