"""Paired tests of two models scored on the same cells: pure functions over labels and probabilities.

Two models judged on the same cells make correlated errors, so their figures must be compared pair by
pair, not as two independent intervals that overlap: McNemar's exact test on the cells where exactly
one is right (accuracy), DeLong's test on the two ROC AUCs (binary), and a paired bootstrap that
resamples whole groups (subjects where known, else cells) and scores both models on every draw.
Cells of one subject are not independent evidence: where subjects exist only the bootstrap over
subjects is honest, and ``compare_predictions`` makes it the test of record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from leukoscope.evaluate.metrics import (
    classification_metrics,
    group_resamples,
    label_figure,
    percentile_interval,
)

#: The figures compared, in table order: key -> how a table names it.
FIGURES: dict[str, str] = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy",
                           "f1_macro": "Macro F1", "roc_auc": "ROC AUC"}
Z95 = float(stats.norm.ppf(0.975))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test: two-sided binomial p (1/2) on the discordant cells, no continuity term.

    ``a_only``: cells only A got right; ``b_only``: only B. Under "equally accurate" each discordant
    cell is a fair coin, so p = min(1, 2 P(X <= min(a_only, b_only))), X ~ Bin(discordant, 1/2).
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(stats.binom.cdf(min(a_only, b_only), n, 0.5)))
    return {"test": "McNemar exact", "both": int((a & b).sum()), "neither": int((~a & ~b).sum()),
            "a_only": a_only, "b_only": b_only, "p_value": p}


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC by midranks (ties count 1/2) and DeLong's structural components of each positive / negative."""
    m, n = len(pos), len(neg)
    all_ranks = stats.rankdata(np.concatenate([pos, neg]))
    pos_ranks, neg_ranks = all_ranks[:m], all_ranks[m:]
    auc = (pos_ranks.sum() - m * (m + 1) / 2) / (m * n)
    v_pos = (pos_ranks - stats.rankdata(pos)) / n          # share of negatives below each positive
    v_neg = 1.0 - (neg_ranks - stats.rankdata(neg)) / m    # share of positives above each negative
    return float(auc), v_pos, v_neg


def auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the boolean ``positive`` (None when one side is empty)."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    return _placements(scores[positive], scores[~positive])[0]


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """``metrics.roc_auc`` by ranks (microseconds, for resampling): binary AUC of column 1, or the
    one-vs-rest mean over the classes present."""
    present = np.unique(y)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return auc(y == 1, probs[:, 1])
    return float(np.mean([auc(y == c, probs[:, c]) for c in present]))


def delong(positive: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, Any]:
    """DeLong's test for two correlated ROC AUCs on the same cells (binary; Sun & Xu's fast form).

    The covariance of the two AUCs comes from each cell's placement values, so the test needs no
    resampling; the 95% interval of the difference (B - A) is normal-theory.
    """
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        raise ValueError("DeLong's test needs positive and negative cells")
    comps = [_placements(s[positive], s[~positive]) for s in (np.asarray(score_a, float),
                                                             np.asarray(score_b, float))]
    aucs = np.array([c[0] for c in comps])
    m, n = int(positive.sum()), int((~positive).sum())
    cov = np.cov(np.stack([c[1] for c in comps])) / m + np.cov(np.stack([c[2] for c in comps])) / n
    diff = float(aucs[1] - aucs[0])
    var = max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0)
    se = float(np.sqrt(var))
    if se == 0.0:
        p, z = (1.0 if diff == 0 else 0.0), None
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    return {"test": "DeLong", "auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff,
            "se": se, "z": z, "p_value": p, "interval": [diff - Z95 * se, diff + Z95 * se]}


def _figure(key: str, k: int) -> Callable[[np.ndarray, np.ndarray], float | None]:
    """(labels, probabilities) -> one of ``FIGURES``."""
    if key == "accuracy":
        return lambda y, p: float((p.argmax(axis=1) == y).mean())
    if key == "roc_auc":
        return macro_auc
    return lambda y, p: label_figure(y, p.argmax(axis=1), k, key)


def paired_bootstrap(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, groups: Sequence[Any],
                     n: int = 2000, seed: int = 0, figures: Sequence[str] = tuple(FIGURES)
                     ) -> dict[str, dict[str, Any]]:
    """Resample whole groups with replacement ``n`` times; on each draw score A and B on the same cells.

    Per figure: 95% percentile intervals of A, of B and of the difference B - A, and the two-sided
    bootstrap p of "no difference" (twice the smaller share of draws on either side of 0, counted as
    (draws + 1) / (all + 1) so it is never 0: its floor is about 2 / n). Draws where
    a figure is undefined (an AUC with one class drawn) are left out and counted.
    """
    y = np.asarray(y, np.int64)
    k = probs_a.shape[1]
    draws = list(group_resamples(np.asarray(groups, dtype=str), seed, n))
    out: dict[str, dict[str, Any]] = {}
    for key in figures:
        score = _figure(key, k)
        pairs = [(score(y[i], probs_a[i]), score(y[i], probs_b[i])) for i in draws]
        kept = np.array([(a, b) for a, b in pairs if a is not None and b is not None], float).reshape(-1, 2)
        if len(kept) == 0:
            out[key] = {"a": None, "b": None, "difference": None, "p_value": None, "draws": 0}
            continue
        d = kept[:, 1] - kept[:, 0]
        p = min(1.0, 2 * (min(int((d <= 0).sum()), int((d >= 0).sum())) + 1) / (len(d) + 1))
        out[key] = {"a": _interval(kept[:, 0]), "b": _interval(kept[:, 1]), "difference": _interval(d),
                    "p_value": p, "draws": int(len(kept))}
    return out


def _interval(values: np.ndarray) -> list[float]:
    return list(percentile_interval(values))


def compare_predictions(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, classes: Sequence[str],
                        groups: Sequence[Any], by_subject: bool, n_boot: int = 2000, seed: int = 0
                        ) -> dict[str, Any]:
    """Both models' figures with 95% intervals, their paired differences and one test per figure.

    ``groups``: what the bootstrap resamples (subjects where ``by_subject``, else one per cell).
    The test of record per figure: with subjects, the bootstrap over subjects for every figure (cells
    of one subject are not independent, which McNemar and DeLong assume; both are still reported);
    without, McNemar exact for accuracy, DeLong for a binary ROC AUC, the bootstrap otherwise.
    """
    y = np.asarray(y, int)
    fig_a, fig_b = classification_metrics(y, probs_a, classes), classification_metrics(y, probs_b, classes)
    boot = paired_bootstrap(y, probs_a, probs_b, groups, n=n_boot, seed=seed)
    mcnemar = mcnemar_exact(probs_a.argmax(axis=1) == y, probs_b.argmax(axis=1) == y)
    binary = len(classes) == 2 and len(np.unique(y)) == 2
    roc = delong(y == 1, probs_a[:, 1], probs_b[:, 1]) if binary else None
    level = "subjects" if by_subject else "cells"
    rows = []
    for key, name in FIGURES.items():
        a, b, bs = fig_a[key], fig_b[key], boot[key]
        test: dict[str, Any] = {"test": f"paired bootstrap over {level}", "p_value": bs["p_value"],
                                "interval": bs["difference"]}
        if not by_subject and key == "accuracy":
            test = {"test": "McNemar exact", "p_value": mcnemar["p_value"], "interval": bs["difference"]}
        elif not by_subject and key == "roc_auc" and roc is not None:
            test = {"test": "DeLong", "p_value": roc["p_value"], "interval": roc["interval"]}
        rows.append({"figure": key, "name": name, "a": a, "a_interval": bs["a"], "b": b,
                     "b_interval": bs["b"], "difference": None if a is None or b is None else b - a,
                     "difference_interval": test["interval"], "test": test["test"],
                     "p_value": test["p_value"]})
    return {"n": int(len(y)), "groups": int(len(set(map(str, groups)))), "level": level,
            "bootstrap": {"draws": n_boot, "seed": seed, "figures": boot},
            "mcnemar": mcnemar, "delong": roc, "table": rows}
