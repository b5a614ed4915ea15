"""Cell typing on DeepAPL, grouped by patient: rare cell types merged into ``other`` or left out (and
every output saying which and how many), ``data split`` that works and never puts a patient on two
sides, the audit's label conflicts, and ``train`` / ``benchmark`` / ``evaluate`` with ``--min-cells``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leukoscope.cli.verbs import app
from leukoscope.data.manifest import UNLABELLED, classes
from leukoscope.data.rare import MIN_CELLS, OTHER, rare_classes
from leukoscope.data.readers import read
from leukoscope.errors import ConfigError

runner = CliRunner()
#: DeepAPL's cell types under 30 cells, with their counts (data/README.md)
RARE_30 = {"Plasma cells": 12, "Prolymphocyte": 1, "Promonocyte": 25, "Thrombocyte aggregation": 7}
#: A small real cohort: 13 patients (416 typed cells); Patient_09 and Patient_25 hold label conflicts
#: (three files), Patient_00 unsigned byte copies of signed cells.
PATIENTS = [f"Patient_{i:02d}" for i in range(12)] + ["Patient_25"]
#: Under 20 cells in that cohort: merged into ``other`` (67 cells) or left out; 7 types stay.
RARE_20 = {"Band neutrophils": 13, "Basophil": 9, "Eosinophils": 9, "Giant thrombocyte": 3,
           "Metamyelocyte": 6, "Myelocyte": 4, "Plasma cells": 2, "Promonocyte": 5, "Promyelocyte": 16}


def run(*args: object) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, " ".join(r.stdout.split()), r.stderr


@pytest.fixture(scope="module")
def deepapl(data: Path) -> Path:
    return data / "deepapl"


@pytest.fixture(scope="module")
def cohort(deepapl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepAPL's layout with ``PATIENTS`` only (real files, copied)."""
    root = tmp_path_factory.mktemp("deepapl13")
    (root / "Data" / "All").mkdir(parents=True)
    shutil.copy(deepapl / "Data" / "master.csv", root / "Data" / "master.csv")
    for p in PATIENTS:
        shutil.copytree(deepapl / "Data" / "All" / p, root / "Data" / "All" / p)
    return root


def test_rare_types_are_merged_into_other_or_left_out_with_their_counts(deepapl: Path) -> None:
    m = read([deepapl])
    merged, report = rare_classes(m, 30, "other")
    assert report.types == RARE_30 and report.cells == 45 and report.done == "other"
    assert report.line() == ("4 class(es) with fewer than 30 cells merged into 'other': Plasma cells (12), "
                             "Prolymphocyte (1), Promonocyte (25), Thrombocyte aggregation (7); 45 cells")
    assert len(merged) == len(m) and classes(merged) == sorted({*classes(m)} - set(RARE_30) | {OTHER})
    assert (merged["label"] == OTHER).sum() == 45
    assert merged.loc[merged["label"] == OTHER, "original_label"].value_counts().to_dict() == RARE_30
    unlabelled = merged["source_split"] == "unlabelled"
    assert unlabelled.sum() == 148 and (merged.loc[unlabelled, "label"] == UNLABELLED).all()

    dropped, report = rare_classes(m, 30, "drop")
    assert report.done == "drop" and report.types == RARE_30
    assert len(dropped) == len(m) - 45 and len(classes(dropped)) == 14
    assert "4 class(es) with fewer than 30 cells left out" in str(report.line())
    assert report.to_json() == {"min_cells": 30, "how": "drop", "done": "drop", "types": RARE_30,
                                "cells": 45, "note": None}


def test_rare_rules_at_the_edges(deepapl: Path) -> None:
    m = read([deepapl])
    # Prolymphocyte (1) and Thrombocyte aggregation (7) would make an 'other' of 8 < 10: left out instead
    out, report = rare_classes(m, 10, "other")
    assert report.done == "drop" and report.cells == 8 and "left out" in str(report.note)
    assert len(out) == len(m) - 8
    # fewer than two types reach the threshold: nothing to tell apart, nothing changes
    out, report = rare_classes(m, 500, "drop")
    assert out is m and report.done is None and len(report.types) == 18
    assert "nothing merged" in str(report.note)
    out, report = rare_classes(m, 0)
    assert out is m and report.types == {} and report.line() is None
    assert rare_classes(m)[1].min_cells == MIN_CELLS == 30
    with pytest.raises(ConfigError, match="--min-cells must be a whole number >= 0"):
        rare_classes(m, -1)
    with pytest.raises(ConfigError, match="--rare must be one of other, drop, got 'merge'"):
        rare_classes(m, 30, "merge")


def test_cli_default_matches_library() -> None:
    from leukoscope.cli.options import MIN_CELLS as CLI_MIN_CELLS

    assert CLI_MIN_CELLS == MIN_CELLS


def _patients_on_one_side(split: pd.DataFrame, col: str) -> None:
    per = split.groupby("subject")[col].nunique()
    assert (per == 1).all(), per[per > 1]


def test_data_split_on_deepapl_works_and_no_patient_straddles_sides(deepapl: Path, tmp_path: Path) -> None:
    code, out, err = run("data", "split", deepapl, "--k", "5", "--out", tmp_path / "folds.csv")
    assert code == 0, err
    assert ("rare classes: 4 class(es) with fewer than 30 cells merged into 'other': Plasma cells (12), "
            "Prolymphocyte (1), Promonocyte (25), Thrombocyte aggregation (7); 45 cells") in out
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert len(folds) == 2624 and folds["subject"].nunique() == 82  # typed cells only, every patient
    assert (folds["label"] == OTHER).sum() == 45 and folds["original_label"].notna().all()
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    _patients_on_one_side(folds, "fold")

    code, out, err = run("data", "split", deepapl, "--rare", "drop", "--out", tmp_path / "sides.csv")
    assert code == 0, err
    sides = pd.read_csv(tmp_path / "sides.csv")
    assert len(sides) == 2624 - 45 and not set(RARE_30) & set(sides["label"])
    assert set(sides["side"]) == {"train", "val", "test"}
    _patients_on_one_side(sides, "side")

    code, _, err = run("data", "split", deepapl, "--min-cells", "0", "--out", tmp_path / "x.csv")
    assert code == 1 and "class Prolymphocyte (1) has fewer than 2 groups; merge or leave out rare " \
                          "classes (train, data split, benchmark: --min-cells" in " ".join(err.split())


def test_audit_reports_a_cell_filed_under_two_types_as_a_label_conflict(cohort: Path, tmp_path: Path) -> None:
    code, out, err = run("data", "audit", cohort, "--out", tmp_path / "audit")
    assert code == 0, err
    assert "label conflict: Patient_09 BA_15759389.jpg filed under Basophil and Monocyte" in out
    assert ("label conflict: Patient_25 BL_6394486.jpg filed under Blast, no lineage spec and "
            "Promyelocyte") in out
    assert "label conflict: Patient_25 LY_6394512.jpg filed under Lymphocyte and Monocyte" in out
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    s = report["summary"]
    assert s["filed_under_two_labels"] == 3 and s["patients_with_files_under_two_labels"] == 2
    # Patient_00's unsigned copies of signed cells are duplicates, not label conflicts
    unsigned_copies = [c for c in report["clusters"] if "" in c["labels"]]
    assert unsigned_copies and s["label_conflicts"] == 3
    assert [c["labels"] for c in report["filed_under_two_labels"]] == [
        ["Basophil", "Monocyte"], ["Blast, no lineage spec", "Promyelocyte"], ["Lymphocyte", "Monocyte"]]
    assert "Files filed under two labels of one patient" in (tmp_path / "audit" / "audit.html").read_text()


def test_audit_finds_every_deepapl_label_conflict(deepapl: Path) -> None:
    from leukoscope.audit import audit

    m = read([deepapl])
    seven = ["Patient_09", "Patient_14", "Patient_16", "Patient_25", "Patient_29", "Patient_37", "Patient_76"]
    result = audit(m[m["subject"].isin(seven)].reset_index(drop=True), n_jobs=1)
    conflicts = result.patient_conflicts()
    assert len(conflicts) == 8 and len({c["subject"] for c in conflicts}) == 7
    first = conflicts[[c["subject"] for c in conflicts].index("Patient_09")]
    assert first["labels"] == ["Basophil", "Monocyte"]
    assert {Path(p).name for p in first["paths"]} == {"BA_15759389.jpg"}
    assert result.summary()["filed_under_two_labels"] == 8 and result.summary()["label_conflicts"] == 8


def test_train_and_evaluate_a_classical_model_with_rare_types_merged(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text, err = run("train", cohort, "--model", "lda", "--min-cells", "20", "--out", out)
    assert code == 0, err
    line = "rare classes: 9 class(es) with fewer than 20 cells merged into 'other'"
    assert line in text and "; 67 cells" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rare_classes"]["types"] == RARE_20 and metrics["rare_classes"]["done"] == "other"
    config = json.loads((out / "bundle" / "config.json").read_text())
    assert OTHER in config["classes"] and len(config["classes"]) == 8 and config["train"]["min_cells"] == 20
    assert "- rare classes: 9 class(es) with fewer than 20 cells merged into 'other'" in (
        out / "bundle" / "MODEL_CARD.md").read_text()
    split = pd.read_csv(out / "bundle" / "split.csv")
    assert (split["source_split"] != "unlabelled").all()  # unlabelled cells are never scored
    _patients_on_one_side(split, "side")
    # evaluate merges the same types, so the test side's Promyelocyte cells count as 'other'
    code, _, err = run("evaluate", out / "bundle", cohort, "--side", "test", "--out", tmp_path / "ev")
    assert code == 0, err
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["rare_classes"]["types"] == RARE_20 and ev["evaluated"] == (split["side"] == "test").sum()


def test_benchmark_drops_rare_types_and_reports_intervals(cohort: Path, tmp_path: Path) -> None:
    code, text, err = run("benchmark", cohort, "--models", "lda,knn", "--cv", "3", "--min-cells", "20",
                          "--rare", "drop", "--out", tmp_path / "lb")
    assert code == 0, err
    assert "rare classes: 9 class(es) with fewer than 20 cells left out" in text
    run_info = json.loads((tmp_path / "lb" / "run.json").read_text())
    assert run_info["rare_classes"]["types"] == RARE_20
    assert run_info["images"] + run_info["held_out_test"] == 416 - 67  # CV on train+val; test held out
    assert len(run_info["classes"]) == 7 and OTHER not in run_info["classes"]
    table = pd.read_csv(tmp_path / "lb" / "leaderboard.csv")
    for key in ("balanced_accuracy", "f1_macro"):
        assert (table[f"{key}_lo"] <= table[f"{key}_pooled"]).all()
        assert (table[f"{key}_pooled"] <= table[f"{key}_hi"]).all()
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "- rare classes: 9 class(es) with fewer than 20 cells left out" in md and " [0." in md
    assert "Rare classes: 9 class(es)" in (tmp_path / "lb" / "leaderboard.html").read_text()


def test_train_options_are_checked_in_one_line(cohort: Path, tmp_path: Path) -> None:
    code, _, err = run("train", cohort, "--model", "lda", "--rare", "merge", "--out", tmp_path / "r")
    assert code == 1 and err.strip() == "error: --rare must be one of other, drop, got 'merge'"


@pytest.mark.slow
def test_network_cv_on_cell_types_reports_balanced_accuracy_and_macro_f1(cohort: Path, tmp_path: Path
                                                                         ) -> None:
    out = tmp_path / "cv"
    code, text, err = run("train", cohort, "--model", "efficientnet_lite0", "--cv", "2", "--epochs", "1",
                          "--img-size", "32", "--min-cells", "20", "--rare", "drop", "--out", out)
    assert code == 0, err
    result = json.loads((out / "cv.json").read_text())
    assert result["rare_classes"]["types"] == RARE_20 and len(result["classes"]) == 7
    for key in ("balanced_accuracy", "f1_macro", "f1_weighted"):
        lo, hi = result[f"{key}_ci95"]
        assert 0 <= lo <= hi <= 1 and f"{key}_mean" in result
    assert "rare classes: 9 class(es) with fewer than 20 cells left out" in text
    assert "pooled balanced accuracy" in text and "pooled macro F1" in text
    for f in (0, 1):
        split = pd.read_csv(out / f"fold-{f}" / "bundle" / "split.csv")
        _patients_on_one_side(split, "side")
