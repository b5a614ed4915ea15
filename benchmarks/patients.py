"""Patient-level diagnosis on DeepAPL (APL vs AML): every registered patient method and the baselines.

    python benchmarks/patients.py [--repeats 5] [--folds 5] [--methods a,b] [--quick] [--out FILE]

Each method runs the library's protocol (``leukoscope.patients.protocol``): repeated stratified K-fold
over the 82 patients, settings / threshold / Platt calibration chosen by an inner patient CV on the
training folds only. Per method: patient ROC AUC mean +- std over repeats, bootstrap-over-patients 95%
interval, sensitivity and specificity of APL at the training-fold threshold, balanced accuracy, Brier,
cell-level AUC (cells inherit the patient's label), AUC on k random cells per held-out patient, and
the wall time of its whole CV (embeddings come from the feature cache, computed once before the clock
starts). Baseline rows: ``composition`` (a registered method: technologist's type shares + LR) and
``promyelocyte-share`` (the technologist's promyelocyte share alone, the published reference).
Writes the JSON (default benchmarks/results/patients.json) and prints a Markdown table with the load.
``--quick``: 10 + 10 patients, 64 px embeddings, 3 folds x 1 repeat (a smoke test).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from readme import patients_markdown

HERE = Path(__file__).resolve().parent
PROTOCOL = "patient-level, {r}x{k} patient-grouped CV"
BASELINE = "promyelocyte-share"


def promyelocyte_share() -> Any:
    """A fixed (unfitted) method: the share of the technologist's typed cells that are promyelocytes."""
    from leukoscope.models.patient.methods import Cells, PatientMethod
    from leukoscope.models.patient.scorers import CompositionScorer, LinearScorer

    class PromyelocyteShare(PatientMethod):
        name = BASELINE

        def __init__(self, index: int):
            super().__init__()
            self.index = index

        def fit(self, cells: Cells, grid: Sequence[Any]) -> dict[Any, Any]:
            coef = np.zeros(cells.n_types)
            coef[self.index] = 1.0
            n = cells.n_types
            fixed = CompositionScorer(LinearScorer(np.zeros(n), np.ones(n), coef, 0.0), None)
            return dict.fromkeys(grid, fixed)

    return PromyelocyteShare


def run_method(name: str, bags: Any, repeats: int, folds: int) -> dict[str, Any]:
    from leukoscope.models.patient.methods import get_method
    from leukoscope.patients.protocol import figures, run_cv

    if name == BASELINE:
        method = promyelocyte_share()(bags.type_names.index("Promyelocyte"))
    else:
        method = get_method(name)
    t0 = time.perf_counter()
    figs = figures(bags, run_cv(method, bags, folds=folds, repeats=repeats))
    return {"method": name, "baseline": name in ("composition", BASELINE), **figs,
            "wall_s": time.perf_counter() - t0}


def frame(result: dict[str, Any]) -> pd.DataFrame:
    """One row per method (the README's patient table and results/patients.csv)."""
    return pd.DataFrame([{
        "method": r["method"], "baseline": r["baseline"], "default": r["method"] == result["default"],
        "protocol": result["protocol"],
        "patients": f"{r['n_patients']} ({r['n_positive']} {r['positive']})",
        "roc_auc": r["roc_auc"], "roc_auc_std": r["roc_auc_std"], "ci_low": r["roc_auc_ci95"][0],
        "ci_high": r["roc_auc_ci95"][1], "sensitivity": r["sensitivity"], "specificity": r["specificity"],
        "balanced_accuracy": r["balanced_accuracy"],
        "cell_roc_auc": None if r["method"] == BASELINE else r["cell_roc_auc"], "wall_s": r["wall_s"],
    } for r in result["rows"]])


def main(argv: list[str] | None = None) -> int:
    from leukoscope.data.readers import read
    from leukoscope.io import write_json_atomic
    from leukoscope.models.registry import list_models
    from leukoscope.patients.bags import DEFAULT_FEATURES, load_bags
    from leukoscope.patients.train import DEFAULT_METHOD
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="Data root (default: $LEUKOSCOPE_DATA).")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--methods", default=None,
                    help="Comma-separated (default: every one, and the baseline).")
    ap.add_argument("--quick", action="store_true", help="Smoke test: 20 patients, 64 px, 3 folds x 1.")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "patients.json")
    args = ap.parse_args(argv)

    repeats, folds = (1, 3) if args.quick else (args.repeats, args.folds)
    features = {**DEFAULT_FEATURES, **({"input_size": 64} if args.quick else {})}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    m = read([(args.data or data_root()) / "deepapl"])
    if args.quick:  # the first 10 patients of each diagnosis
        first = m.groupby("subject")["diagnosis"].first()
        m = m[m["subject"].isin(first.groupby(first).head(10).index)]
    bags = load_bags(m, "diagnosis", features=features)
    embed_s = time.perf_counter() - t0
    names = args.methods.split(",") if args.methods else [*list_models(family="patient"), BASELINE]
    rows = []
    for name in names:
        rows.append(run_method(name, bags, repeats, folds))
        r = rows[-1]
        print(f"{name:20s} AUC {r['roc_auc']:.3f} +- {r['roc_auc_std']:.3f} [{r['roc_auc_ci95'][0]:.3f}, "
              f"{r['roc_auc_ci95'][1]:.3f}] {r['wall_s']:.0f} s", flush=True)
    protocol = PROTOCOL.format(r=repeats, k=folds)
    result = {"protocol": protocol, "data": "deepapl", "target": "diagnosis", "features": features,
              "default": DEFAULT_METHOD, "embed_s": embed_s, "load_before": load,
              "load_after": os.getloadavg()[0],
              "cells": int(len(bags.X)), "skipped": len(bags.skipped), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(patients_markdown(frame(result)))
    print(f"load average {load:.1f} before, {result['load_after']:.1f} after; embeddings {embed_s:.0f} s "
          f"(cache); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
