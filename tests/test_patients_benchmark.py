"""The patient-level rows of the README (benchmarks/patients.py -> results/patients.csv): rendered with
their protocol, checked by check_readme like the other tables, and a drifted patient AUC reported."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import check_readme  # noqa: E402
from patients import frame  # noqa: E402
from readme import END, START, patients_markdown, results_markdown, throughput_markdown  # noqa: E402
from test_check_readme import _results  # noqa: E402

RESULT = {"protocol": "patient-level, 5x5 patient-grouped CV", "default": "cell-logodds", "rows": [
    {"method": m, "baseline": m == "composition", "n_patients": 82, "n_positive": 22, "positive": "APL",
     "roc_auc": auc, "roc_auc_std": 0.03, "roc_auc_ci95": [auc - 0.08, min(auc + 0.06, 1.0)],
     "sensitivity": 0.8, "specificity": 0.85, "balanced_accuracy": 0.825, "cell_roc_auc": 0.8, "wall_s": 20.0}
    for m, auc in (("cell-logodds", 0.93), ("composition", 0.76))]}


def _readme(tmp_path: Path, patients: pd.DataFrame) -> Path:
    models, tp = _results(tmp_path / "results")
    section = "\n\n".join([results_markdown(models),
                           throughput_markdown(tp, {"input_size": 128, "images": 256, "cores": 2}),
                           patients_markdown(patients)])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\n{section}\n{END}\n")
    return readme


def test_patient_rows_carry_their_protocol_and_are_checked(tmp_path: Path) -> None:
    patients = frame(RESULT)
    text = patients_markdown(patients)
    row = "| cell-logodds (default) | patient-level, 5x5 patient-grouped CV | 82 (22 APL) | 0.930 |"
    assert row in text
    assert "| composition (baseline) |" in text
    readme = _readme(tmp_path, patients)
    patients.to_csv(tmp_path / "results" / "patients.csv", index=False)
    assert check_readme.check(readme, tmp_path / "results") == []
    drift = patients.assign(roc_auc=patients["roc_auc"] - [0.05, 0.0])
    drift.to_csv(tmp_path / "results" / "patients.csv", index=False)
    problems = check_readme.check(readme, tmp_path / "results")
    assert len(problems) == 1, problems
    assert problems[0].startswith("Patient method: cell-logodds (default), ROC AUC")
