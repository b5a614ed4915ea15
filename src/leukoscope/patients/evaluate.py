"""``evaluate_patients``: score a ``patient`` bundle on another cohort laid out the same way.

Each patient of the cohort with a value in the bundle's target column is one bag of its cells (byte
copies once, unreadable files skipped and counted), called at the bundle's stored threshold. Writes
``metrics.json`` with the patient-level figures under ``patient`` (ROC AUC with a bootstrap-over-patients
95% interval, sensitivity / specificity of the positive class, balanced accuracy, Brier, n) and the
cell-level ones under ``cell`` (every cell scored alone, inheriting its patient's label), plus
``patients.csv`` and ``cells.csv``. Patients the bundle was trained on are named in a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.bundle.patient import PatientBundle
from leukoscope.data.manifest import Manifest
from leukoscope.evaluate.metrics import classification_metrics
from leukoscope.io import write_csv_atomic, write_json_atomic
from leukoscope.patients.bags import load_bags
from leukoscope.patients.protocol import auc, bootstrap_auc
from leukoscope.probability import sigmoid
from leukoscope.progress import SILENT, Progress

METRICS_FILE = "metrics.json"


def _rate(hit: np.ndarray) -> float | None:
    return float(hit.mean()) if len(hit) else None


def patient_figures(y: np.ndarray, p: np.ndarray, call: np.ndarray, called: np.ndarray) -> dict[str, Any]:
    """ROC AUC (+ bootstrap 95% interval) and Brier over the patients with a probability (a cell the model
    knows); sensitivity, specificity and balanced accuracy over those ``called`` (enough such cells), as
    ``report`` calls them; n of each."""
    scored = np.isfinite(p)
    ys, ps = y[scored], p[scored]
    both = 0 < ys.sum() < len(ys)
    sens, spec = _rate(call[called & (y == 1)] == 1), _rate(call[called & (y == 0)] == 0)
    return {"n_patients": int(len(y)), "n_positive": int(y.sum()), "n_scored": int(scored.sum()),
            "n_called": int(called.sum()),
            "roc_auc": auc(ys, ps) if both else None,
            "roc_auc_ci95": bootstrap_auc(ys, ps[None]) if both else None,
            "sensitivity": sens, "specificity": spec,
            "balanced_accuracy": (sens + spec) / 2 if sens is not None and spec is not None else None,
            "brier": float(((ps - ys) ** 2).mean()) if len(ys) else None}


def evaluate_patients(bundle: PatientBundle, m: Manifest, out: Path, cache: Path | None = None,
                      progress: Progress = SILENT, target: str | None = None) -> dict[str, Any]:
    """Patient- and cell-level figures of ``bundle`` on the cohort ``m``, each patient's label read from
    the column ``target`` (default: the one the bundle was trained on); files written into ``out``."""
    cfg = bundle.config
    bags = load_bags(m, target or str(cfg["target"]), bundle.positive, cfg["features"].get("params", {}),
                     cache, progress, classes=bundle.classes)
    # as ``report`` calls them: cells typed by the bundle's own head, not the technologist's folders (what a
    # new patient has), the cells the unfamiliarity score flags left out, no call below min_cells
    types = np.full(len(bags.X), -1)
    n = len(bags.y)
    flagged, _ = bundle.flag_cells(bags.X)
    used = np.bincount(bags.patient[~flagged], minlength=n)
    decision = bundle.scorer.decisions(bags.X[~flagged], types[~flagged], bags.patient[~flagged], n)
    p = np.where(used > 0, sigmoid(bundle.log_odds(decision)), np.nan)  # no cell left: no probability
    counts = np.bincount(bags.patient, minlength=n)
    too_few = used < max(bundle.min_cells, 1)
    call = bundle.decide(decision).astype(int)
    cell_p = sigmoid(np.nan_to_num(bundle.log_odds(bundle.scorer.cell_scores(bags.X, types))))
    cell_y = bags.y[bags.patient]
    pos = bundle.positive_index
    cell_probs = np.zeros((len(cell_p), 2))
    cell_probs[:, pos], cell_probs[:, 1 - pos] = cell_p, 1 - cell_p
    cell_labels = np.where(cell_y == 1, pos, 1 - pos)
    seen = _trained_on(bundle, bags.cells)
    warnings = [f"{len(seen)} evaluated patient(s) share cells with the bundle's training data "
                f"({', '.join(seen[:5])}{', ...' if len(seen) > 5 else ''}): figures on them are optimistic"
                ] if seen else []
    if too_few.any():
        warnings.append(f"{int(too_few.sum())} patient(s) have fewer than {bundle.min_cells} cells the "
                        "model knows: no call for them, here as in a report (left out of sensitivity and "
                        "specificity; in the AUC where they have a probability)")
    result = {"bundle": str(bundle.path), "model": cfg.get("model"), "family": bundle.family,
              "target": bags.target, "classes": bundle.classes, "positive": bundle.positive,
              "protocol": "patient-level: each patient's cells as one bag; cells inherit the patient's label",
              "trained_with": cfg.get("protocol"), "warnings": warnings, "cells": int(len(bags.X)),
              "skipped": [{"path": s, "reason": r} for s, r in bags.skipped],
              "patient": {**patient_figures(bags.y, p, call, ~too_few), "threshold_probability":
                          float(sigmoid(bundle.log_odds(bundle.threshold))), "too_few": int(too_few.sum())},
              "cell": classification_metrics(cell_labels, cell_probs, bundle.classes)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / METRICS_FILE, result)
    write_csv_atomic(out / "patients.csv", pd.DataFrame({
        "subject": bags.subjects, bags.target: bags.label_names(), "cells": counts,
        "cells_unfamiliar": np.bincount(bags.patient[flagged], minlength=n),
        f"p_{bundle.positive}": p,
        "call": np.where(too_few, "", np.where(call == 1, bundle.positive, bags.negative)),
        "too_few": too_few}))
    write_csv_atomic(out / "cells.csv", pd.DataFrame({
        "path": bags.cells["path"], "subject": bags.cells["subject"],
        f"p_{bundle.positive}": cell_p, "unfamiliar": flagged,
        "predicted_type": np.array(bundle.cell_types)[bundle.head.predict(bags.X)]}))
    return result


def _trained_on(bundle: PatientBundle, cells: pd.DataFrame) -> list[str]:
    """Evaluated patients with a cell whose bytes the bundle was trained on (its split.csv)."""
    split = bundle.split()
    if split is None or "sha1" not in split:
        return []
    hit = cells["sha1"].isin(set(split["sha1"].astype(str)))
    return sorted(set(cells.loc[hit, "subject"].astype(str)))
