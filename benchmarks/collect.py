"""The figures of a finished (or partial) run, gathered from each step's outputs into the results
CSVs (models, leaderboards, throughput, steps) and summary.md."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from leukoscope.evaluate.intervals import MIN_CELLS
from leukoscope.io import write_csv_atomic, write_text_atomic
from plan import Plan
from readme import readme_section, summary_markdown, throughput_frame
from suite import DATASETS, FEATURES, METRIC_KEYS, NETWORKS, ROW_KINDS, Dataset


def _metrics(src: dict[str, Any]) -> dict[str, Any]:
    return {k: src.get(k) for k in METRIC_KEYS}


def _intervals(ci: dict[str, Any]) -> dict[str, Any]:
    """``{k}_lo`` / ``{k}_hi`` columns from a figure -> [lo, hi] mapping (missing ones left out)."""
    return {f"{k}_{end}": ci[k][i] for k in METRIC_KEYS if ci.get(k) for i, end in enumerate(("lo", "hi"))}


def leaderboards(plan: Plan) -> pd.DataFrame:
    frames = []
    for ds in DATASETS:
        for kind in FEATURES:
            f = plan.step_dir(f"leaderboard-{ds.key}-{kind}") / "out" / "leaderboard.csv"
            if f.exists():
                run = json.loads((f.parent / "run.json").read_text())
                frames.append(pd.read_csv(f).assign(dataset=ds.key, features=kind, folds=run["folds"],
                                                    too_small=bool(run.get("too_small"))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def classical_rows(ds: Dataset, lb: pd.DataFrame) -> list[dict[str, Any]]:
    """The best classical model over every feature kind, and the PCA+SVM seed design (deep features)."""
    from leukoscope.evaluate.shortcut import LABEL as SHORTCUT  # a baseline row, never the best model

    keep = (lb["dataset"] == ds.key) & (lb["status"] == "ok") & (lb["model"] != SHORTCUT) if len(lb) else None
    part = lb[keep] if len(lb) else lb
    rows = []
    picks: list[tuple[str, pd.DataFrame]] = [("best-classical", part), ("pca-svm", part[
        (part["model"] == "pca-svm") & (part["features"] == "deep")] if len(part) else part)]
    for kind, sel in picks:
        if sel.empty:
            continue
        sel = sel.sort_values(["balanced_accuracy_mean", "roc_auc_mean", "model", "features"],
                              ascending=[False, False, True, True])
        r = sel.iloc[0]
        rows.append({"row": kind, "model": r["model"], "features": r["features"], "protocol": r["protocol"],
                     "evaluation": f"{r['folds']}-fold CV (mean)", "n": None,
                     **{k: r[f"{k}_mean"] for k in METRIC_KEYS}, "train_s": r["fit_s_mean"],
                     "too_small": bool(r.get("too_small", False)),
                     **{c: r[c] for k in METRIC_KEYS for c in (f"{k}_lo", f"{k}_hi") if pd.notna(r.get(c))}})
    return rows


def network_rows(ds: Dataset, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for model in NETWORKS:
        train = plan.step(f"train-{ds.key}-{model}").record()
        run = plan.step_dir(f"train-{ds.key}-{model}") / "run"
        row = {"row": model, "model": model, "features": "pixels"}
        if ds.cv and (run / "cv.json").exists() and train:
            cv = json.loads((run / "cv.json").read_text())
            rows.append(row | {"protocol": cv["protocol"], "evaluation": f"{cv['k']}-fold CV (pooled)",
                               "n": cv["pooled"]["n"], **_metrics(cv["pooled"]),
                               **_intervals({k: cv.get(f"{k}_ci95") for k in METRIC_KEYS}),
                               "too_small": cv["pooled"]["n"] < MIN_CELLS,
                               "train_s": train["wall_s"] / cv["k"]})
        metrics = plan.step_dir(f"evaluate-{ds.key}-{model}") / "out" / "metrics.json"
        if not ds.cv and metrics.exists() and train:
            r = json.loads(metrics.read_text())
            rows.append(row | {"protocol": r["protocol"], "evaluation": "held-out test",
                               "n": r["evaluated"], **_metrics(r["cell"]),
                               **_intervals(r["cell"].get("ci95", {})),
                               "too_small": bool(r.get("too_small")), "train_s": train["wall_s"]})
    return rows


def model_table(plan: Plan, lb: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for ds in DATASETS:
        found = {r["row"]: r for r in classical_rows(ds, lb) + network_rows(ds, plan)}
        for kind in ROW_KINDS:
            missing = {"row": kind, "evaluation": "not measured yet"}
            rows.append({"dataset": ds.key, **found.get(kind, missing)})
    cols = ["dataset", "row", "model", "features", "protocol", "evaluation", "n", *METRIC_KEYS, "train_s",
            *(f"{k}_{end}" for k in METRIC_KEYS for end in ("lo", "hi")), "too_small"]
    return pd.DataFrame(rows).reindex(columns=cols)


def throughput_table(plan: Plan) -> tuple[pd.DataFrame, dict[str, Any]]:
    f = plan.step_dir("throughput") / "throughput.json"
    if not f.exists():
        return pd.DataFrame(columns=["method", "cells_per_s"]), {}
    t = json.loads(f.read_text())
    return throughput_frame(t), t


def patients_table(plan: Plan) -> pd.DataFrame:
    from patients import frame

    f = plan.step_dir("patients") / "patients.json"
    return frame(json.loads(f.read_text())) if f.exists() else pd.DataFrame()


def crosslab_table(plan: Plan) -> pd.DataFrame:
    f = plan.step_dir("crosslab") / "crosslab.csv"
    return pd.read_csv(f) if f.exists() else pd.DataFrame()


def unfamiliar_tables(plan: Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    from unfamiliar import frames

    f = plan.step_dir("unfamiliar") / "unfamiliar.json"
    return frames(json.loads(f.read_text())) if f.exists() else (pd.DataFrame(), pd.DataFrame())


def steps_table(plan: Plan, status: dict[str, str]) -> pd.DataFrame:
    rows = []
    for s in plan.steps:
        rec = s.record() or {}
        ok = s.done.exists() and rec.get("rc") == 0
        rows.append({"step": s.name, "status": status.get(s.name, "done earlier" if ok else "not run"),
                     "wall_s": rec.get("wall_s") if ok else None,
                     "peak_rss_mb": rec.get("peak_rss_mb") if ok else None,
                     "started": rec.get("started"), "load_before": rec.get("load_before")})
    return pd.DataFrame(rows)


def collect(plan: Plan, status: dict[str, str]) -> str:
    """Write the results CSVs and summary.md; the README section they give."""
    lb = leaderboards(plan)
    models = model_table(plan, lb)
    tp, tp_info = throughput_table(plan)
    steps = steps_table(plan, status)
    patients = patients_table(plan)
    crosslab = crosslab_table(plan)
    unfamiliar = unfamiliar_tables(plan)
    plan.results.mkdir(parents=True, exist_ok=True)
    for frame, name in ((models, "models"), (lb, "leaderboards"), (tp, "throughput"), (steps, "steps"),
                        (patients, "patients"), (crosslab, "crosslab"), (unfamiliar[0], "unfamiliar"),
                        (unfamiliar[1], "unfamiliar_types")):
        write_csv_atomic(plan.results / f"{name}.csv", frame)
    section = readme_section(models, tp, tp_info, steps, patients, crosslab, unfamiliar)
    write_text_atomic(plan.results / "summary.md", summary_markdown(section, steps, lb))
    return section
