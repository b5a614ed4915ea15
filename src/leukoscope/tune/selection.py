"""The selection rule: the search's best trial replaces the model's defaults only when it beats
them by more than noise (one standard error of the paired per-fold difference)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna


def improvement(best: list[float], default: list[float], k: int) -> dict[str, float]:
    """Mean paired fold improvement of ``best`` over ``default`` and its standard error.

    Fold scores of K-fold CV share most of their training rows, so the plain standard error is
    too small; Nadeau & Bengio's correction (Machine Learning 52:239, 2003; for repeated CV,
    Bouckaert & Frank, PAKDD 2004) scales the variance by ``1/n + n_test/n_train`` = ``1/n + 1/(k-1)``.
    Without paired folds (unequal lengths) the standard error is 0: plain comparison.
    """
    if len(best) != len(default) or len(best) < 2:
        return {"mean": float(np.mean(best) - np.mean(default)) if best and default else 0.0, "se": 0.0}
    d = np.asarray(best, float) - np.asarray(default, float)
    return {"mean": float(d.mean()), "se": float(math.sqrt(d.var(ddof=1) * (1 / len(d) + 1 / (k - 1))))}


def best_params(study: optuna.Study, objective: Any) -> dict[str, Any]:
    """The best trial's model parameters, as its search space maps them (plus the fixed ones)."""
    return objective.params(optuna.trial.FixedTrial(study.best_trial.params, study.best_trial.number))


def choose(study: optuna.Study, objective: Any, default: dict[str, Any], default_cv: float,
           default_folds: list[float], k: int) -> tuple[int | None, float, dict[str, Any], dict[str, Any]]:
    """The configuration a study keeps: ``(trial, cv, params, search_best)``; ``trial`` is None when
    the defaults stay, and ``search_best`` is the search's best trial with its paired gain.

    The defaults are a candidate too, chosen by the same CV (never by the test side): the best trial
    replaces them only when it beats them by more than one standard error of the paired difference.
    """
    top = study.best_trial
    gain = improvement(top.user_attrs.get("fold_scores", []), default_folds, k)
    search_best = {"trial": top.number, "cv": study.best_value, **gain}
    if study.best_value > default_cv and gain["mean"] > gain["se"]:
        return top.number, study.best_value, best_params(study, objective), search_best
    return None, default_cv, default, search_best
