"""The patient-level protocol: nested, repeated, stratified K-fold over patients.

Per outer fold, ``fit_nested`` runs an inner stratified K-fold over the training patients only: it
picks the method's regularisation by mean inner-fold patient AUC over ``INNER_REPEATS`` shuffles
(``choose``), fixes the decision threshold (Youden on the inner out-of-fold scores, averaged over the
shuffles) and a Platt calibration (a 1-d logistic on those scores), then refits on all training
patients. The held-out patients are scored once per repeat. Every figure is patient-level: ROC AUC
per repeat (mean +- std), a bootstrap over patients (2,000 resamples, each scored on every repeat's
out-of-fold scores), sensitivity and specificity at the training-fold threshold, balanced accuracy,
Brier score; and, beside them, cell-level AUC where cells inherit their patient's label.
``check_no_leak`` vouches that no patient sits on two sides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.data.splits import check_no_leak
from leukoscope.errors import DataError
from leukoscope.models.patient.methods import Cells, PatientMethod
from leukoscope.models.patient.scorers import Scorer
from leukoscope.patients.bags import Bags
from leukoscope.probability import sigmoid
from leukoscope.progress import SILENT, Progress

FOLDS, REPEATS, INNER = 5, 5, 4
#: The inner CV is repeated (new shuffles) and its folds pooled to choose a setting (see ``choose``).
INNER_REPEATS = 3
BOOTSTRAP = 2000
#: Cells per patient at which held-out patients are re-scored on a random subset of their cells.
CELL_COUNTS = (1, 2, 4, 8, 16)
#: ``too_few``: the fewest cells whose patient AUC is within this of the AUC with every cell.
MIN_CELLS_TOLERANCE = 0.05


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Rank ROC AUC, ties averaged (NaN with one class)."""
    from scipy.stats import rankdata

    n1 = int(y.sum())
    n0 = len(y) - n1
    if not n0 or not n1:
        return float("nan")
    r = rankdata(s)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def youden(y: np.ndarray, s: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, s)
    return float(min(thr[np.argmax(tpr - fpr)], np.max(s)))


def one_thread() -> Any:
    """BLAS / OpenMP on one thread for the CV's small fits (82 patients, ~2,700 cells x 1,280): on the
    shared 2-core machine at load ~12 a 1,900-cell logistic regression took 1.3 s with two BLAS threads
    and 0.04 s with one (spin-waiting threads fight the other jobs for the cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


@dataclass
class Fitted:
    """A method fitted with its inner-CV choices: setting, threshold, Platt calibration."""

    scorer: Scorer
    hyper: Any
    threshold: float  # on the decision (log-odds) scale
    platt: tuple[float, float]  # probability = sigmoid(a * decision + b)
    inner_auc: dict[str, float]

    def probability(self, decision: np.ndarray | float) -> np.ndarray:
        a, b = self.platt
        return sigmoid(a * np.asarray(decision) + b)


def cells_of(bags: Bags, patients: np.ndarray) -> Cells:
    """The cells of some patients (indices into ``bags.subjects``), patients renumbered 0..n-1."""
    patients = np.asarray(patients)
    rows = bags.rows(patients)
    local = np.searchsorted(np.sort(patients), bags.patient[rows])
    order = np.argsort(patients)
    return Cells(bags.X[rows], bags.types[rows], order[local], bags.y[patients], len(bags.type_names))


def check_folds(bags: Bags, folds: int) -> None:
    """Enough patients of each class for ``folds`` outer folds and an inner CV inside each."""
    if folds < 2:
        raise DataError(f"patient CV needs at least 2 folds, got {folds}")
    for c, n in zip((bags.negative, bags.positive), np.bincount(bags.y, minlength=2), strict=True):
        if n < folds or n - int(np.ceil(n / folds)) < 2:
            raise DataError(f"too few patients for {folds}-fold patient CV: class {c!r} has {n} "
                            f"(need at least {max(folds, 3)})")


def fit_nested(method: PatientMethod, bags: Bags, train: np.ndarray, seed: int) -> Fitted:
    """Choose the setting by inner CV on ``train`` patients, calibrate on it, refit on all of them."""
    with one_thread():
        return _fit_nested(method, bags, np.asarray(train), seed)


def _fit_nested(method: PatientMethod, bags: Bags, train: np.ndarray, seed: int) -> Fitted:
    from sklearn.model_selection import StratifiedKFold

    y = bags.y[train]
    grid = list(method.grid)
    k = int(min(INNER, np.bincount(y, minlength=2).min()))
    if k < 2:
        raise DataError("too few patients of one class to choose settings by an inner CV")
    oof = {g: np.zeros(len(train)) for g in grid}  # mean over the inner repeats
    per_fold: dict[Any, list[float]] = {g: [] for g in grid}
    for i in range(INNER_REPEATS):
        for itr, ite in StratifiedKFold(k, shuffle=True, random_state=seed + 7919 * i).split(train, y):
            fits = method.fit(cells_of(bags, train[itr]), grid)
            held = cells_of(bags, train[ite])
            for g in grid:
                d = fits[g].decisions(held.X, held.types, held.patient, len(ite))
                oof[g][ite] += d / INNER_REPEATS
                per_fold[g].append(auc(y[ite], d))
    chosen = choose(grid, per_fold)
    scorer = method.fit(cells_of(bags, train), [chosen])[chosen]
    return Fitted(scorer, chosen, youden(y, oof[chosen]), platt(oof[chosen], y),
                  {str(g): float(np.nanmean(a)) for g, a in per_fold.items()})


def platt(decisions: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt's (a, b): probability = sigmoid(a * decision + b), with a >= 0. A scorer that ranks the inner
    folds' patients backwards gets a = 0 (every patient the training prevalence) rather than probabilities
    that fall as its decision rises, which would contradict its own threshold."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e4).fit(decisions[:, None], y)
    if fit.coef_[0, 0] > 0:
        return float(fit.coef_[0, 0]), float(fit.intercept_[0])
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    return 0.0, float(np.log(rate / (1 - rate)))


def choose(grid: list[Any], per_fold: dict[Any, list[float]]) -> Any:
    """The setting with the best mean inner-fold patient AUC; ties go to the most regularised (``grid`` is
    strongest first). Repeating the inner CV (``INNER_REPEATS``) steadies the choice on ~65 patients:
    cell-logodds on DeepAPL, 5x5 outer CV, went from 0.910 +- 0.026 (one inner CV) to 0.919 +- 0.017
    (three). The one-standard-error rule toward the strongest setting chose C = 1e-4 in most folds
    and lost 0.02-0.03 AUC for cell-logodds, so it is not used."""
    means = {g: float(np.nanmean(a)) if np.isfinite(a).any() else -np.inf for g, a in per_fold.items()}
    return max(grid, key=lambda g: (round(means[g], 6), -grid.index(g)))


@dataclass
class CVRun:
    """Out-of-fold results of every repeat: decisions, probabilities and calls per patient."""

    decisions: np.ndarray  # (repeats, patients)
    probs: np.ndarray
    calls: np.ndarray  # 0/1 at each fold's training threshold
    cell_scores: np.ndarray  # (repeats, cells)
    by_cells: np.ndarray  # (repeats, len(CELL_COUNTS), patients): decision on k random cells
    fold: np.ndarray  # (repeats, patients): the outer fold that held each patient out
    chosen: list[Any]


def _leak_check(bags: Bags, test: np.ndarray) -> None:
    side = np.where(np.isin(bags.patient, test), "test", "train")
    check_no_leak(pd.DataFrame({"group": bags.cells["subject"].to_numpy(), "side": side}))


def run_cv(method: PatientMethod, bags: Bags, folds: int = FOLDS, repeats: int = REPEATS, seed: int = 0,
           progress: Progress = SILENT) -> CVRun:
    """Repeated stratified K-fold over patients; every held-out patient scored once per repeat."""
    with one_thread():
        return _run_cv(method, bags, folds, repeats, seed, progress)


def _run_cv(method: PatientMethod, bags: Bags, folds: int, repeats: int, seed: int,
            progress: Progress) -> CVRun:
    from sklearn.model_selection import StratifiedKFold

    check_folds(bags, folds)
    n = len(bags.y)
    what = f"{method.name}: {repeats}x{folds} patient CV"
    advance = progress.task(what, repeats * folds)
    run = CVRun(np.zeros((repeats, n)), np.zeros((repeats, n)), np.zeros((repeats, n), int),
                np.full((repeats, len(bags.X)), np.nan), np.zeros((repeats, len(CELL_COUNTS), n)),
                np.full((repeats, n), -1), [])
    for r in range(repeats):
        outer = StratifiedKFold(folds, shuffle=True, random_state=seed + r)
        rng = np.random.default_rng(seed + r)
        for f, (tr, te) in enumerate(outer.split(np.zeros(n), bags.y)):
            _leak_check(bags, te)
            run.fold[r, te] = f
            fitted = fit_nested(method, bags, tr, seed=1000 + seed + r * folds + f)
            held = cells_of(bags, te)
            d = fitted.scorer.decisions(held.X, held.types, held.patient, len(te))
            run.decisions[r, te], run.probs[r, te] = d, fitted.probability(d)
            run.calls[r, te] = d >= fitted.threshold
            run.cell_scores[r, bags.rows(te)] = fitted.scorer.cell_scores(held.X, held.types)
            run.chosen.append(fitted.hyper)
            for i, p in enumerate(te):
                rows = np.flatnonzero(held.patient == i)
                rows = rows[fitted.scorer.bag(held.X[rows], held.types[rows])[1] > 0]  # the cells it uses
                for j, k in enumerate(CELL_COUNTS):
                    pick = rng.choice(rows, min(k, len(rows)), replace=False)
                    s, w = fitted.scorer.bag(held.X[pick], held.types[pick])
                    run.by_cells[r, j, p] = float(np.nan_to_num(s) @ w)
            advance(1)
    progress.done(what)
    return run


def bootstrap_auc(y: np.ndarray, scores: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """95% interval of the mean-over-repeats AUC when the patients are resampled with replacement."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    while len(out) < n:
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            out.append(float(np.mean([auc(y[i], s[i]) for s in scores])))
    return [float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))]


def min_cells(curve: dict[int, float], full: float) -> int:
    """The fewest cells per patient from which on every measured count's AUC is within
    ``MIN_CELLS_TOLERANCE`` of the AUC with all of a patient's cells (the largest count if none)."""
    counts = sorted(curve)
    ok = [k for i, k in enumerate(counts) if all(curve[j] >= full - MIN_CELLS_TOLERANCE for j in counts[i:])]
    return ok[0] if ok else counts[-1]


def figures(bags: Bags, run: CVRun) -> dict[str, Any]:
    """Patient-level figures of a CV run (JSON-ready), cell-level AUC beside them."""
    y = bags.y
    aucs = np.array([auc(y, s) for s in run.decisions])
    sens = run.calls[:, y == 1].mean(axis=1)
    spec = 1 - run.calls[:, y == 0].mean(axis=1)
    yc = y[bags.patient]
    cell = [auc(yc[~np.isnan(s)], s[~np.isnan(s)]) for s in run.cell_scores]
    curve = {k: float(np.mean([auc(y, run.by_cells[r, j]) for r in range(len(aucs))]))
             for j, k in enumerate(CELL_COUNTS)}
    chosen = pd.Series([str(c) for c in run.chosen]).value_counts()
    return {
        "n_patients": int(len(y)), "n_positive": int(y.sum()), "positive": bags.positive,
        "n_cells": int(len(bags.X)), "repeats": int(len(aucs)), "folds": int(len(run.chosen) // len(aucs)),
        "roc_auc": float(aucs.mean()), "roc_auc_std": float(aucs.std()), "roc_auc_repeats": aucs.tolist(),
        "roc_auc_ci95": bootstrap_auc(y, run.decisions),
        "sensitivity": float(sens.mean()), "specificity": float(spec.mean()),
        "balanced_accuracy": float(((sens + spec) / 2).mean()),
        "brier": float(((run.probs - y) ** 2).mean()),
        "cell_roc_auc": float(np.nanmean(cell)), "cell_roc_auc_std": float(np.nanstd(cell)),
        "auc_by_cells_per_patient": {str(k): v for k, v in curve.items()},
        "min_cells": min_cells(curve, float(aucs.mean())),
        "chosen": {str(k): int(v) for k, v in chosen.items()},
    }


def out_of_fold(bags: Bags, run: CVRun) -> pd.DataFrame:
    """One row per patient: label, cells, mean out-of-fold decision and probability, share of calls."""
    return pd.DataFrame({
        "subject": bags.subjects, bags.target: bags.label_names(),
        "cells": np.bincount(bags.patient, minlength=len(bags.y)),
        "decision": run.decisions.mean(axis=0), "probability": run.probs.mean(axis=0),
        "called_positive": run.calls.mean(axis=0)})
