"""``leukoscope train COHORT --target``, ``evaluate`` and ``export`` of a patient bundle, through the CLI
(Typer's CliRunner) on small real DeepAPL cohorts; bad input is one red line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from patients_support import SIZE, cohort, later_cohort, run, run_dir  # noqa: F401


def test_train_target_writes_bundle_and_cv(cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    code, out = run("train", cohort, "--target", "diagnosis", "--out", tmp_path / "run", "--repeats", 1,
                    "--cv", 3, "--img-size", SIZE, "--model", "composition")
    assert code == 0, out
    assert "1 cell file(s) skipped" in out and "BL_7821735.jpg: cannot decode image" in out
    cv = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert cv["model"] == "composition" and cv["repeats"] == 1 and cv["folds"] == 3
    assert cv["n_patients"] == 24 and 0 <= cv["roc_auc"] <= 1
    config = json.loads((tmp_path / "run" / "bundle" / "config.json").read_text())
    assert config["family"] == "patient" and config["target"] == "diagnosis" and config["positive"] == "APL"
    card = (tmp_path / "run" / "bundle" / "MODEL_CARD.md").read_text()
    assert "patient-level diagnosis" in card and "repeated patient-grouped CV" in card
    assert "research only" in card and "cohort: cohort" in card


def test_evaluate_on_another_cohort_writes_patient_key(run_dir: Path, later_cohort: Path,  # noqa: F811
                                                       tmp_path: Path) -> None:
    code, out = run("evaluate", run_dir / "bundle", later_cohort, "--out", tmp_path / "ev")
    assert code == 0, out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    p = m["patient"]
    assert p["n_patients"] == 8 and p["n_positive"] == 4
    assert 0 <= p["roc_auc"] <= 1 and p["roc_auc_ci95"][0] <= p["roc_auc"] <= p["roc_auc_ci95"][1]
    assert {"sensitivity", "specificity", "balanced_accuracy"} <= set(p)
    assert m["cell"]["n"] > 8 * 8
    assert not [w for w in m["warnings"] if "share cells" in w]  # none of these patients was trained on
    assert (tmp_path / "ev" / "patients.csv").is_file() and (tmp_path / "ev" / "cells.csv").is_file()
    # evaluate scores the calls report makes: unfamiliar cells left out, no call below min_cells
    code, out = run("report", run_dir / "bundle", later_cohort, "--cohort", "--out", tmp_path / "rep")
    assert code == 0, out
    ev = pd.read_csv(tmp_path / "ev" / "patients.csv").set_index("subject")
    rep = pd.read_csv(tmp_path / "rep" / "patients.csv").set_index("subject")
    positive = m["positive"]
    assert sorted(ev.index) == sorted(rep.index)
    for s, r in rep.iterrows():
        assert ev.loc[s, f"p_{positive}"] == pytest.approx(r[f"p_{positive}"], abs=1e-5, nan_ok=True), s
        assert ev.loc[s, "too_few"] == r["too_few"], s
        assert ev.fillna("").loc[s, "call"] == ("" if pd.isna(r["call"]) else r["call"]), s  # none: too few
        assert ev.loc[s, "cells_unfamiliar"] == r["cells_unfamiliar"], s
    p = m["patient"]
    assert p["n_called"] == int((~rep["too_few"]).sum())  # sensitivity and specificity of these alone


def test_evaluate_on_training_patients_warns(run_dir: Path, cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    code, out = run("evaluate", run_dir / "bundle", cohort, "--out", tmp_path / "ev")
    assert code == 0, out
    assert "24 evaluated patient(s) share cells with the bundle's training data" in out
    code, out = run("evaluate", run_dir / "bundle", cohort, "--adapt", "--out", tmp_path / "adapted")
    assert code != 0 and "--adapt: patient bundles cannot be adapted to a new lab" in " ".join(out.split())
    assert not (tmp_path / "adapted").exists()
    # options of a cell-level evaluation would be ignored: each is refused, by name, in one line
    code, out = run("evaluate", run_dir / "bundle", cohort, "--side", "test", "--tta", "--class-map",
                    "pbc-deepapl", "--out", tmp_path / "cells")
    said = " ".join(out.split())
    assert code != 0 and "--side, --class-map, --tta: not options of a patient bundle's evaluation" in said
    assert "Traceback" not in out and not (tmp_path / "cells").exists()


def test_export_writes_the_embedding_network(run_dir: Path, cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    import shutil

    from leukoscope.bundle import load_bundle
    from leukoscope.data.images import load_rgb
    from leukoscope.models.onnx import ort_session
    from leukoscope.models.preprocess import prepare

    copy = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", copy)
    code, out = run("export", copy, "--onnx")
    assert code == 0, out
    b = load_bundle(copy)
    img = [load_rgb(next((cohort / "Data" / "All" / "Patient_00").rglob("*.jpg")))]
    session = ort_session(copy / "model.onnx")
    views = [prepare(v, b.extractor.pre) for v in (img, [np.ascontiguousarray(img[0][:, ::-1])])]
    onnx_emb = np.mean([session.run(None, {"input": x})[0] for x in views], axis=0)  # config: views 2
    assert json.loads((copy / "config.json").read_text())["onnx"]["views"] == 2
    assert np.allclose(onnx_emb, b.embed(img), atol=1e-4)


def test_bad_input_is_one_line(cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    for args, message in [
        (["--target", "stage"], "no column 'stage'"),
        (["--target", "diagnosis", "--positive", "CML"], "--positive 'CML' is not a value"),
        (["--target", "diagnosis", "--cv", 13], "too few patients for 13-fold patient CV"),
        (["--target", "diagnosis", "--model", "svc"], "'svc' is not a patient-level method"),
        (["--positive", "APL"], "--positive 'APL': not one of the classes"),  # a cell-level operating point
        (["--repeats", "3"], "--repeats goes with --target"),
    ]:
        code, out = run("train", cohort, "--out", tmp_path / "x", "--img-size", SIZE, *args)
        assert code == 1 and message in out and "Traceback" not in out, (args, out)


def test_a_negative_platt_slope_gives_the_same_calls_in_evaluate_and_report(
        run_dir: Path, later_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    """Calls are made on the scale the threshold was chosen on, so a bundle whose calibration runs backwards
    (fitted before slopes were kept >= 0) still makes one call per patient; new fits keep a >= 0."""
    import shutil

    from leukoscope.patients.protocol import platt

    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", bundle)
    config = json.loads((bundle / "config.json").read_text())
    config["platt"] = [-0.9, -0.1]
    (bundle / "config.json").write_text(json.dumps(config))
    assert run("evaluate", bundle, later_cohort, "--out", tmp_path / "ev")[0] == 0
    assert run("report", bundle, later_cohort, "--cohort", "--out", tmp_path / "rep")[0] == 0
    ev = pd.read_csv(tmp_path / "ev" / "patients.csv").set_index("subject")
    rep = pd.read_csv(tmp_path / "rep" / "patients.csv").set_index("subject")
    called = rep[~rep["too_few"]]
    assert len(called) and (ev.loc[called.index, "call"] == called["call"]).all()

    backwards = np.array([2.0, 1.0, 0.5, -0.5, -1.0, -2.0])
    assert platt(backwards, np.array([0, 0, 0, 1, 1, 0])) == (0.0, pytest.approx(np.log(1 / 2)))
    assert platt(-backwards, np.array([0, 0, 0, 1, 1, 1]))[0] > 0


def test_byte_identical_cells_in_two_patients_are_warned() -> None:
    from leukoscope.patients.bags import shared_cells_warning

    cells = pd.DataFrame({"sha1": ["a", "a", "b", "c", "c"], "subject": ["P1", "P2", "P1", "P3", "P3"]})
    assert shared_cells_warning(cells) == ("1 cell file(s) are byte-identical in two or more patients (P1 / "
                                           "P2): the patient CV may train on one copy and test on the other, "
                                           "so its figures may be optimistic")
    assert shared_cells_warning(cells.iloc[2:]) is None
