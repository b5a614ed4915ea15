"""What a study leaves behind: best.yaml (for ``train`` / ``benchmark --config``), best.json,
trials.csv and report.html (history, intermediate values, importances, slice plots)."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from leukoscope.errors import ConfigError
from leukoscope.io import write_csv_atomic, write_json_atomic, write_text_atomic
from leukoscope.tune.settings import TuneSettings

BEST_FILE, SUMMARY_FILE, TRIALS_FILE, REPORT_FILE = "best.yaml", "best.json", "trials.csv", "report.html"


@dataclass
class TuneResult:
    """A finished search: the kept and default configurations, scored on CV and the test side."""

    study: optuna.Study
    settings: TuneSettings
    family: str
    protocol: str
    warning: str | None
    split: dict[str, int]
    best: dict[str, Any]
    default: dict[str, Any]
    counts: dict[str, int]
    config: dict[str, Any]
    features: dict[str, Any] | None
    skipped: list[tuple[str, str]]
    seconds: float


def load_config(path: Path) -> dict[str, Any]:
    """A classical configuration written by ``tune`` (``model``, ``params``, ``features``), each checked
    here so that a hand-edited file fails naming the file and the setting, not deep in the benchmark."""
    from leukoscope.features import list_feature_kinds
    from leukoscope.train.config import read_settings

    data = read_settings(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise ConfigError(f"{path}: expected a mapping with 'model' (a leukoscope tune best.yaml)")
    if data.get("family", "classical") != "classical" or not isinstance(data.get("params"), dict):
        raise ConfigError(f"{path}: not a classical configuration; "
                          "a network's goes to leukoscope train --config")
    features = data.get("features", "handcrafted")
    if not isinstance(features, str) or features not in list_feature_kinds():
        raise ConfigError(f"{path}: features must be one of {', '.join(list_feature_kinds())}, "
                          f"got {features!r}")
    return {"model": data["model"], "params": data["params"], "features": features}


def check_out(out: Path, study: str) -> None:
    """Refuse an ``out`` holding another study's outputs: this study's would silently replace them.
    The same study's are its own, rewritten when it resumes."""
    from leukoscope.train.config import read_settings

    path = Path(out) / SUMMARY_FILE
    if not path.is_file():
        return
    summary = read_settings(path)
    found = summary.get("study") if isinstance(summary, dict) else None
    if found != study:
        raise ConfigError(f"--out {out} holds the outputs of study {found!r}; writing study {study!r} there "
                          "would replace them: give another --out")


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (surplus ones left out): number, state, value, params, timings, errors and
    the worker (host:pid) that ran it."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "value": t.value if t.state == TrialState.COMPLETE else None,
                     **{f"param_{k}": v for k, v in t.params.items()},
                     "steps": len(t.intermediate_values), "last_reported": last,
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None,
                     "fold_scores": " ".join(f"{s:.4f}" for s in t.user_attrs.get("fold_scores", [])),
                     "error": t.user_attrs.get("error", ""), "worker": t.user_attrs.get("worker", "")})
    return pd.DataFrame(rows)


def importances(study: optuna.Study, fixed: dict[str, Any]) -> dict[str, float]:
    """fANOVA importance of each searched parameter ({} until two trials with varied values complete)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({k for t in done for k in t.params if k not in fixed})
    names = [n for n in names if len({repr(t.params.get(n)) for t in done}) > 1]
    if len(done) < 2 or not names:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(
                study, params=names, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):
        return {}


def _figures(study: optuna.Study, result: TuneResult, imp: dict[str, float]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from leukoscope.reports.html import figure_to_data_uri

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    label = f"{result.settings.metric} ({result.settings.cv}-fold CV, train side)"
    figs: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ordered = sorted(done, key=lambda t: t.number)
    values = np.array([t.value for t in ordered], float)
    ax.scatter([t.number for t in ordered], values, s=18, color="#5b6bbf", label="complete")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", s=18, color="#c55",
                   label="pruned (last reported)")
    ax.step([t.number for t in ordered], np.maximum.accumulate(values), where="post",
            color="#222", label="best so far")
    ax.set(xlabel="trial", ylabel=label, title="optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figs["history"] = figure_to_data_uri(fig)

    if any(t.intermediate_values for t in trials):
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        for t in trials:
            if t.intermediate_values:
                steps = sorted(t.intermediate_values)
                ax.plot(steps, [t.intermediate_values[s] for s in steps], alpha=0.6, lw=1,
                        color="#c55" if t.state == TrialState.PRUNED else "#5b6bbf")
        unit = "fold (from 0; running mean)" if result.family == "classical" else "epoch (first fold)"
        ax.set(xlabel=unit, ylabel="reported value", title="intermediate values (red: pruned)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        figs["intermediate"] = figure_to_data_uri(fig)

    if imp:
        fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(imp) + 1.2))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="#5b6bbf")
        ax.set(xlabel="importance (fANOVA, share of variance)", title="parameter importances")
        figs["importances"] = figure_to_data_uri(fig)

    params = sorted({k for t in done for k in t.params if k not in result.settings.fixed})
    if params and done:
        cols = min(3, len(params))
        rows = math.ceil(len(params) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, sharey=True)
        for ax, name in zip(axes.flat, params, strict=False):
            pts = [(t.params[name], t.value, t.number) for t in done if name in t.params]
            xs = [p[0] for p in pts]
            numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
            x = xs if numeric else [str(v) for v in xs]
            ax.scatter(x, [p[1] for p in pts], c=[p[2] for p in pts], cmap="viridis", s=16)
            dist = done[-1].distributions.get(name)
            if numeric and getattr(dist, "log", False):
                ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(params):]:
            ax.axis("off")
        axes[0][0].set_ylabel(result.settings.metric)
        fig.suptitle("slice plots (colour: trial number)")
        fig.tight_layout()
        figs["slices"] = figure_to_data_uri(fig)
    return figs


def protocol_text(result: TuneResult) -> str:
    s, n, classical = result.settings, result.split, result.family == "classical"
    objective = ("mean fold score" if classical else
                 "pooled out-of-fold score; each fold's network early-stopped on a val side of its rest")
    fitted = ("fitted on the whole train side" if classical
              else "trained on the train side (a val part of it for early stopping)")
    cv = f"{s.cv}-fold grouped CV" + (f" repeated {s.classical_repeats}x" if classical else "")
    return (f"Objective: {s.metric} of {cv} ({objective}) on the train side only "
            f"({n['train']} images, {n['train_groups']} groups) of a grouped, stratified train/test split "
            f"({'the test side of ' + s.split if s.split else f'test {s.test:.0%}'}: {n['test']} images, "
            f"{n['test_groups']} groups, seed {s.seed}; duplicate clusters "
            f"{'kept on one side' if s.dedupe else 'not grouped (--no-dedupe)'}). "
            f"The test side was read once, after the search, to score the best configuration and the "
            f"model's defaults, both {fitted}. Sampler: TPE; pruner: {s.pruner} on per-"
            f"{'fold' if classical else 'epoch'} values. The best trial replaces the defaults only when "
            "its paired per-fold improvement exceeds one standard error (Nadeau & Bengio's correction "
            "for overlapping training folds).")


def summary(result: TuneResult) -> dict[str, Any]:
    s = result.settings
    return {"model": s.model, "family": result.family, "study": result.study.study_name,
            "metric": s.metric, "protocol": result.protocol, "warning": result.warning,
            "protocol_text": protocol_text(result), "settings": asdict(s), "split": result.split,
            "trials": result.counts, "best": result.best, "default": result.default,
            "features": result.features, "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
            "seconds": round(result.seconds, 1), "config_file": BEST_FILE,
            "next": ("leukoscope benchmark PATH --config " if result.family == "classical"
                     else "leukoscope train PATH --config ") + BEST_FILE}


def write_outputs(result: TuneResult, out: Path) -> dict[str, Path]:
    """best.yaml (for train / benchmark --config), best.json, trials.csv and report.html, atomically."""
    import yaml

    from leukoscope import __version__
    from leukoscope.reports.html import write_report

    out = Path(out)
    paths = {"config": out / BEST_FILE, "summary": out / SUMMARY_FILE, "trials": out / TRIALS_FILE,
             "report": out / REPORT_FILE}
    info = summary(result)
    which = "the defaults" if result.best["trial"] is None else f"trial {result.best['trial']}"
    head = (f"# leukoscope tune: best of {result.counts['complete']} complete trials and the defaults, study "
            f"{result.study.study_name!r} ({which}, CV {result.settings.metric} "
            f"{result.best['cv']:.4f}, {result.protocol})\n# use: {info['next']}\n")
    config = json.loads(json.dumps(result.config))  # plain types for YAML
    write_text_atomic(paths["config"], head + yaml.safe_dump(config, sort_keys=False))
    write_json_atomic(paths["summary"], info)
    frame = trials_frame(result.study)
    write_csv_atomic(paths["trials"], frame)
    imp = importances(result.study, result.settings.fixed)
    figure_keys = ("n", "accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "roc_auc")
    write_report(paths["report"], "tune.html", title=f"Hyperparameter search: {result.settings.model}",
                 protocol=result.protocol, warning=result.warning, version=__version__, info=info,
                 figures=_figures(result.study, result, imp), importances=imp, figure_keys=figure_keys,
                 trials=frame.head(200).to_dict("records"), trial_columns=list(frame.columns))
    return paths
