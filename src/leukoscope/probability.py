"""Scores to probabilities: the tempered softmax every bundle, engine and report shares.

A bundle's family gives uncalibrated scores (logits); dividing them by the bundle's calibration
temperature before the softmax is what makes its probabilities calibrated (fitting that temperature
is ``evaluate.calibration.fit_temperature``). One function, so predict, explain, serve and the
training loop never differ in how a score becomes a probability.

This module is the bottom layer: it imports nothing of leukoscope.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64; rows sum to 1)."""
    return softmax(np.asarray(logits, np.float64) / temperature, axis=1)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """The logistic function: log-odds to a probability (float64)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
