"""95% intervals for every headline figure, and the flag for a test side too small to rank models.

A proportion over independent items (accuracy over images without subject ids, a sensitivity) gets
a Wilson interval; where subjects are known, cells of one patient are not independent evidence, so
figures are resampled by whole subject (``metrics.group_resamples``) instead. An interval is
``[lo, hi]`` or None where the figure itself is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from leukoscope.evaluate.metrics import group_resamples, label_figure, percentile_interval

#: Below either, a test side cannot tell models apart: intervals are wider than their differences.
MIN_CELLS, MIN_SUBJECTS = 50, 10
#: The headline figures that get an interval in evaluate (ECE is a calibration check, not a ranking).
HEADLINE = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc")
Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of ``k`` successes in ``n`` trials (None for n = 0): unlike k/n +- z*se
    it stays inside [0, 1] and is not degenerate at 0 or n successes."""
    if n <= 0:
        return None
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def subject_groups(subjects: Sequence[Any] | None, n: int) -> np.ndarray | None:
    """Subject ids as resampling groups (a row without one is its own group); None where no row has one."""
    if subjects is None:
        return None
    ids = [None if s is None or s != s else str(s) for s in subjects]
    if all(s is None for s in ids):
        return None
    return np.array([f"subject:{s}" if s is not None else f"row:{i}" for i, s in enumerate(ids)],
                    dtype=object)


def bootstrap(stat: Callable[[np.ndarray], float | None], groups: np.ndarray | Sequence[np.ndarray],
              seed: int = 0, n: int = 1000) -> tuple[float, float] | None:
    """95% percentile interval of ``stat(rows)`` over ``n`` resamples of whole ``groups`` (or over the
    row-index ``draws`` given instead); resamples where the figure is undefined (one class drawn) are
    left out; None if every one is."""
    draws = groups if isinstance(groups, list) else group_resamples(np.asarray(groups), seed, n)
    vals = [v for v in (stat(i) for i in draws) if v is not None]
    return percentile_interval(vals) if vals else None


def rank_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """``metrics.roc_auc`` (binary, or one-vs-rest macro over the classes present) from average ranks
    (Mann-Whitney U, which equals the trapezoidal ROC area ties included), fast enough to resample."""
    from scipy.stats import rankdata

    present = np.unique(y)
    if len(present) < 2:
        return None

    def auc(pos: np.ndarray, score: np.ndarray) -> float:
        n_pos = int(pos.sum())
        return float((rankdata(score)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(pos) - n_pos)))

    if probs.shape[1] == 2:
        return auc(y == 1, probs[:, 1])
    return float(np.mean([auc(y == c, probs[:, c]) for c in present]))


def rows_auc(y: np.ndarray, probs: np.ndarray, rows: np.ndarray) -> float | None:
    """``rank_auc`` of the drawn ``rows`` (for ``bootstrap``)."""
    return rank_auc(y[rows], probs[rows])


def _label_figure(y: np.ndarray, pred: np.ndarray, k: int, key: str, rows: np.ndarray) -> float:
    return label_figure(y[rows], pred[rows], k, key)


def headline_intervals(y: np.ndarray, probs: np.ndarray, subjects: Sequence[Any] | None = None,
                       seed: int = 0, n: int = 1000) -> dict[str, Any]:
    """``ci95`` (figure -> [lo, hi] or None) for ``HEADLINE`` and how it was obtained (``ci95_method``):
    resampled by subject where subjects are known, else by image (accuracy: Wilson)."""
    y, probs = np.asarray(y, np.int64), np.asarray(probs, np.float64)
    if len(y) == 0:
        return {"ci95": dict.fromkeys(HEADLINE), "ci95_method": "none (no items)"}
    pred, k = probs.argmax(axis=1), probs.shape[1]
    groups = subject_groups(subjects, len(y))
    by_subject = groups is not None
    # one set of draws for every figure: the intervals describe the same resampled patients
    draws = list(group_resamples(groups if groups is not None else np.arange(len(y)), seed, n))
    out: dict[str, Any] = {}
    for key in HEADLINE:
        if key == "roc_auc":
            ci = bootstrap(partial(rows_auc, y, probs), draws)
        elif key == "accuracy" and not by_subject:
            ci = wilson(int((pred == y).sum()), len(y))
        else:
            ci = bootstrap(partial(_label_figure, y, pred, k, key), draws)
        out[key] = None if ci is None else [ci[0], ci[1]]
    method = ("bootstrap over subjects" if by_subject
              else "bootstrap over images (no subject ids); Wilson for accuracy")
    return {"ci95": out, "ci95_method": f"{method}, {n} resamples"}


def too_small(n_cells: int, n_subjects: int | None) -> str | None:
    """The warning for a test side too small to rank models (``n_subjects`` None: not known), else None."""
    if n_cells >= MIN_CELLS and (n_subjects is None or n_subjects >= MIN_SUBJECTS):
        return None
    subj = "" if n_subjects is None else f", {n_subjects} subjects"
    return (f"too small to rank models: {n_cells} cells{subj} (fewer than {MIN_CELLS} cells or "
            f"{MIN_SUBJECTS} subjects); differences between models here are within the intervals")


def fmt_ci(ci: Sequence[float] | None, digits: int = 2) -> str:
    """``[lo, hi]`` for a text table ("" without an interval)."""
    return "" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def with_intervals(scores: dict[str, Any], y: np.ndarray, probs: np.ndarray,
                   subjects: Sequence[Any] | None, seed: int = 0) -> dict[str, Any]:
    """``evaluation_metrics``'s output with ``ci95`` on its cell level (by subject where known) and
    its subject level (by subject), and ``too_small`` (the warning, or None) for the evaluated side."""
    from leukoscope.evaluate.metrics import subject_probabilities

    scores["cell"] |= headline_intervals(y, probs, subjects, seed)
    n_subjects = None
    if "subject" in scores and subjects is not None:
        ids, labels, means, _ = subject_probabilities(np.asarray(y, int), np.asarray(probs, np.float64),
                                                      subjects)
        scores["subject"] |= headline_intervals(labels, means, ids, seed)
        n_subjects = len(ids)
    scores["too_small"] = too_small(len(y), n_subjects)
    return scores
