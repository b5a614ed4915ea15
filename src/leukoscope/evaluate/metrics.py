"""Classification figures over (labels, probabilities): pure functions returning JSON-ready dicts.

Every consumer (training, benchmark, evaluate, the web page) scores predictions through
``classification_metrics`` so a number means the same thing everywhere. Undefined figures (an AUC
with one class present, an empty input) are ``None``, never NaN, so the output is valid JSON.
Subject-level figures average each subject's cell probabilities: the question a clinician asks is
about a patient, and cells of one patient are not independent evidence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from leukoscope.evaluate.calibration import ece


def _num(v: float) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v


def _check(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> None:
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(y) != len(probs):
        raise ValueError(f"probs shape {probs.shape} does not match {len(y)} labels x {len(classes)} classes")


def roc_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary AUC, or one-vs-rest macro AUC over the classes present (None with fewer than two)."""
    y = np.asarray(y, int)
    present = np.unique(y)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(skm.roc_auc_score(y == 1, probs[:, 1]))
    return float(np.mean([skm.roc_auc_score(y == c, probs[:, c]) for c in present]))


def classification_metrics(y: Sequence[int] | np.ndarray, probs: np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro / weighted P-R-F1, per-class P-R-F1, AUC, confusion, ECE.

    ``y`` holds integer labels indexing ``classes``; ``probs`` one row per item, one column per class.
    Averages are over the classes present in ``y``; ``absent_classes`` names the others.
    """
    y = np.asarray(y, int)
    probs = np.asarray(probs, np.float64)
    _check(y, probs, classes)
    k = len(classes)
    if len(y) == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "roc_auc": None, "ece": None,
                "confusion_matrix": [[0] * k for _ in range(k)], "per_class": {},
                "absent_classes": list(classes)}
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    present = np.unique(y)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        # balanced accuracy over the classes present in y (sklearn's definition)
        "balanced_accuracy": float(np.mean([(pred[y == c] == c).mean() for c in present])),
        "absent_classes": [c for i, c in enumerate(classes) if i not in present],
    }
    for avg in ("macro", "weighted"):
        # over the classes present: an absent class has no recall, and scoring it 0 would halve
        # the macro figure of a set holding 2 of 4 classes (a call into it still costs accuracy
        # and the recall of the class it came from)
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, labels=present, average=avg,
                                                         zero_division=0)
        out |= {f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)}
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, c in enumerate(classes)}
    out["roc_auc"] = roc_auc(y, probs)
    out["ece"] = _num(ece(probs, y))
    out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=labels).tolist()
    return out


def _subject_ids(subjects: Sequence[Any]) -> np.ndarray:
    """Subject ids as strings, missing (None / NaN) as None."""
    return np.array([None if s is None or s != s else str(s) for s in subjects], dtype=object)


def subject_probabilities(y: np.ndarray, probs: np.ndarray, subjects: Sequence[Any]
                          ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Per subject (rows with a subject only): id, majority label, mean probability, cell count."""
    subj = _subject_ids(subjects)
    ids = sorted({s for s in subj if s is not None})
    labels, means, counts = [], [], []
    for s in ids:
        sel = subj == s
        labels.append(int(np.bincount(y[sel]).argmax()))
        means.append(probs[sel].mean(axis=0))
        counts.append(int(sel.sum()))
    k = probs.shape[1]
    return (ids, np.array(labels, int), np.array(means, np.float64).reshape(-1, k),
            np.array(counts, int))


def subject_table(y: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                  subjects: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per subject: label, cells, cell accuracy, mean probabilities, subject-level call."""
    y = np.asarray(y, int)
    probs = np.asarray(probs, np.float64)
    ids, labels, means, counts = subject_probabilities(y, probs, subjects)
    subj = _subject_ids(subjects)
    rows = []
    for s, lab, mean, n in zip(ids, labels, means, counts, strict=True):
        sel = subj == s
        pred = int(mean.argmax())
        rows.append({"subject": s, "label": classes[lab], "cells": int(n),
                     "cell_accuracy": float((probs[sel].argmax(axis=1) == y[sel]).mean()),
                     "predicted": classes[pred], "correct": bool(pred == lab),
                     **{f"p_{c}": float(mean[i]) for i, c in enumerate(classes)}})
    return rows


def evaluation_metrics(y: Sequence[int] | np.ndarray, probs: np.ndarray, classes: Sequence[str],
                       subjects: Sequence[Any] | None = None) -> dict[str, Any]:
    """Cell-level figures, plus subject-level figures and the per-subject table where subjects exist."""
    y = np.asarray(y, int)
    probs = np.asarray(probs, np.float64)
    out: dict[str, Any] = {"cell": classification_metrics(y, probs, classes)}
    if subjects is not None and any(s is not None for s in _subject_ids(subjects)):
        _, labels, means, _ = subject_probabilities(y, probs, subjects)
        out["subject"] = classification_metrics(labels, means, classes)
        out["subjects"] = subject_table(y, probs, classes, subjects)
    return out


def curves(y: Sequence[int] | np.ndarray, probs: np.ndarray, classes: Sequence[str]
           ) -> dict[str, dict[str, Any]]:
    """ROC and precision-recall curves per class (one-vs-rest), for plotting."""
    y = np.asarray(y, int)
    probs = np.asarray(probs, np.float64)
    out: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(classes):
        pos = y == i
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = skm.roc_curve(pos, probs[:, i])
        prec, rec, _ = skm.precision_recall_curve(pos, probs[:, i])
        out[c] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(skm.auc(fpr, tpr)),
                  "precision": prec.tolist(), "recall": rec.tolist(),
                  "average_precision": float(skm.average_precision_score(pos, probs[:, i]))}
    return out


#: Figures ``bootstrap_ci`` computes from predicted labels.
BOOTSTRAP_FIGURES = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted")


def label_figure(y: np.ndarray, pred: np.ndarray, k: int, metric: str) -> float:
    """One of ``BOOTSTRAP_FIGURES`` from a k x k confusion matrix, as ``classification_metrics`` computes
    it (balanced accuracy and macro F1 over the classes present in ``y``), in microseconds, so thousands
    of resamples stay cheap and each interval is of its own point estimate."""
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    support, predicted, hits = cm.sum(1), cm.sum(0), np.diag(cm)
    if metric == "accuracy":
        return float(hits.sum() / max(cm.sum(), 1))
    if metric == "balanced_accuracy":
        present = support > 0
        return float((hits[present] / support[present]).mean())
    f1 = np.divide(2 * hits, support + predicted, out=np.zeros(k), where=(support + predicted) > 0)
    if metric == "f1_macro":
        return float(f1[support > 0].mean())
    if metric == "f1_weighted":
        return float((f1 * support).sum() / max(support.sum(), 1))
    raise ValueError(f"unknown figure {metric!r}; one of {', '.join(BOOTSTRAP_FIGURES)}")


def group_resamples(groups: np.ndarray, seed: int, n: int) -> Iterator[np.ndarray]:
    """``n`` row-index draws, each of as many whole groups (subjects) as there are, with replacement
    (vectorised: the rows of each drawn group are one slice of the rows sorted by group)."""
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.cumsum(counts) - counts
    for _ in range(n):
        drawn = rng.integers(0, len(counts), len(counts))
        lens = counts[drawn]
        offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        yield order[np.repeat(starts[drawn], lens) + offsets]


def percentile_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The central 95% of bootstrap ``values``."""
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, seed: int, n: int = 2000,
                 metric: str = "f1_weighted") -> tuple[float, float]:
    """95% interval of ``metric`` (one of ``BOOTSTRAP_FIGURES``) over ``n`` resamples of whole groups
    (subjects) with replacement: the spread a new set of patients would give."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    k = int(max(y.max(initial=0), pred.max(initial=0))) + 1
    return percentile_interval([label_figure(y[i], pred[i], k, metric)
                                for i in group_resamples(groups, seed, n)])
