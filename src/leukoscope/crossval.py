"""Cross-validation of classical models, each fold set in a worker process of its own.

Why a process per model: a model that hangs or blows up (a kernel SVM on a bad scale, a library
segfault) is stopped at ``timeout`` and reported as failed without taking the leaderboard with it; the
workers fork from a forkserver that has already imported ``_PRELOAD``, so each starts in milliseconds.
Used by ``leaderboard.benchmark`` and by ``tune``'s classical objective.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, cast

import numpy as np

#: metric key -> column title, in display order. Each gets ``_mean`` and ``_std`` columns.
METRICS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced Accuracy",
    "roc_auc": "ROC AUC",
    "f1_weighted": "F1 (weighted)",
    "f1_macro": "F1 (macro)",
    "fit_s": "Fit s",
    "predict_s": "Predict s",
}
#: Imported once by the forkserver, before any worker forks from it (plus the models' own modules).
_PRELOAD = ["numpy", "sklearn.base", "leukoscope.models.classical", "leukoscope.evaluate.metrics"]


def _modules(estimator: Any) -> set[str]:
    """The modules defining an estimator and its nested steps (what a worker must import)."""
    found = {type(estimator).__module__}
    for value in estimator.get_params(deep=True).values() if hasattr(estimator, "get_params") else ():
        if hasattr(value, "fit"):
            found.add(type(value).__module__)
    return found


def cross_validate_model(estimator: Any, X: np.ndarray, y: np.ndarray, folds: np.ndarray, classes: list[str],
                         on_fold: Callable[[int, dict], None] | None = None) -> dict:
    """Fit and score ``estimator`` on every fold; returns per-fold figures and the out-of-fold
    predicted class of every row (``pred``).

    ``on_fold(i, figures)`` runs after each fold (tuning reports it to its pruner, which may stop the CV).
    """
    from sklearn.base import clone

    from leukoscope.bundle.classical import class_probabilities
    from leukoscope.evaluate.metrics import classification_metrics

    rows = []
    pred = np.full(len(y), -1)
    proba = np.full((len(y), len(classes)), np.nan)
    for f in np.unique(folds):
        test = folds == f
        model = clone(estimator)
        t0 = time.perf_counter()
        model.fit(X[~test], y[~test])
        t1 = time.perf_counter()
        probs = class_probabilities(model, X[test], len(classes))
        t2 = time.perf_counter()
        m = classification_metrics(y[test], probs, classes)
        pred[test], proba[test] = probs.argmax(1), probs
        rows.append({k: m.get(k) for k in METRICS} | {"fit_s": t1 - t0, "predict_s": t2 - t1})
        if on_fold:
            on_fold(len(rows) - 1, rows[-1])
    return {"folds": rows, "pred": pred, "proba": proba}


def _child(conn: Connection, estimator: Any, X: np.ndarray, y: np.ndarray, folds: np.ndarray,
           classes: list[str]) -> None:
    """Worker process body: run the CV and send back figures or the error.

    One BLAS / OpenMP thread per worker: workers already fill the cores, and spinning BLAS threads
    on a busy machine made small linear models ~15x slower.
    """
    from threadpoolctl import threadpool_limits

    try:
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            cpu = time.process_time()
            res = cross_validate_model(estimator, X, y, folds, classes)
            conn.send(res | {"cpu_s": time.process_time() - cpu})
    except BaseException as e:  # everything a model can throw becomes its row's error
        last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
        where = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
        conn.send({"error": f"{type(e).__name__}: {e}{where}"})
    finally:
        conn.close()


def run_models(estimators: dict[str, Any], X: np.ndarray, y: np.ndarray, folds: np.ndarray,
               classes: list[str], *, timeout: float | None = None, jobs: int = 1,
               on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """CV of each estimator in its own worker process, ``jobs`` at a time, each within ``timeout`` s."""
    ctx = mp.get_context("forkserver")
    models = set().union(*(_modules(e) for e in estimators.values())) if estimators else set()
    ctx.set_forkserver_preload(_PRELOAD + sorted(models))
    pending = deque(estimators.items())
    running: dict[Connection, tuple[str, Any, float]] = {}
    results: dict[str, dict] = {}

    def finish(name: str, res: dict) -> None:
        results[name] = res
        if on_done:
            on_done(name, res)

    while pending or running:
        while pending and len(running) < max(1, jobs):
            name, est = pending.popleft()
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(send, est, X, y, folds, classes), daemon=True)
            proc.start()
            send.close()
            running[recv] = (name, proc, time.monotonic())
        limit = None
        if timeout is not None:
            limit = max(0.0, min(start + timeout for _, _, start in running.values()) - time.monotonic())
        for ready in wait(list(running), timeout=limit):
            conn = cast(Connection, ready)
            name, proc, _ = running.pop(conn)
            try:
                res: dict = conn.recv()
            except EOFError:
                proc.join()
                res = {"error": f"worker process died (exit code {proc.exitcode})"}
            conn.close()
            proc.join()
            finish(name, res)
        if timeout is not None:
            now = time.monotonic()
            for conn, (name, proc, start) in list(running.items()):
                if now - start >= timeout:
                    proc.terminate()
                    proc.join()
                    conn.close()
                    del running[conn]
                    finish(name, {"error": f"timed out after {timeout:g} s", "status": "timeout"})
    return results
