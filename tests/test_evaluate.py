"""evaluate: metrics.json, predictions.csv and a self-contained report; honesty warnings; --side."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from imagefiles import truncated_copy
from leukoscope.bundle import load_bundle
from leukoscope.data.readers import read
from leukoscope.errors import DataError
from leukoscope.evaluate.report import evaluate
from use_support import cnmc_train, network_bundle  # noqa: F401


def test_report_metrics_and_skipped(network_bundle, data, tmp_path):  # noqa: F811
    bundle = load_bundle(network_bundle)
    cells = tmp_path / "cells"
    shutil.copytree(data / "cnmc_cells", cells)
    truncated_copy(sorted((cells / "all").glob("*.png"))[0], cells / "all" / "UID_9_1_1_all.png")
    m = read([cells])
    r = evaluate(bundle, m, tmp_path / "ev")
    assert r["images"] == 12 and r["evaluated"] == 11 and len(r["skipped"]) == 1
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["cell"]["n"] == 11 and saved["cell"]["accuracy"] == pytest.approx(r["cell"]["accuracy"])
    # subject level: one row per subject, its mean probability
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv", dtype={"subject": str})
    assert len(pred) == 11 and set(pred["correct"]) <= {True, False}
    subjects = {s["subject"]: s for s in r["subjects"]}
    assert set(subjects) == set(pred["subject"]) and r["subject"]["n"] == len(subjects)
    for sid, part in pred.groupby("subject"):
        assert subjects[sid]["p_all"] == pytest.approx(part["p_all"].mean(), abs=1e-5)
    # calibration before (T = 1) and after the bundle's temperature
    cal = r["calibration"]
    assert cal["temperature"] == pytest.approx(bundle.temperature)
    probs = pred[["p_all", "p_hem"]].to_numpy()
    y = (pred["label"] == "hem").to_numpy(int)
    from leukoscope.evaluate.calibration import ece

    assert cal["ece_after"] == pytest.approx(ece(probs, y), abs=1e-4)
    html = (tmp_path / "ev" / "report.html").read_text()
    for part in ("Confusion matrix", "ROC and precision-recall", "Reliability".lower(), "Training curves",
                 "Per subject", "Most confident mistakes", "UID_9_1_1_all.png", "subject-grouped"):
        assert part.lower() in html.lower()
    assert html.count("data:image/png;base64,") >= 4 and "<script src" not in html
    # cnmc_cells shares subjects 1, 3, H6 and H10 with the training sample, not the images
    assert r["overlap_with_training_split"] == {}


def test_side_test_and_training_overlap_warning(network_bundle, data, tmp_path):  # noqa: F811
    bundle = load_bundle(network_bundle)
    m = read([data / "cnmc_sample"])
    everything = evaluate(bundle, m, tmp_path / "all")
    assert any("were used to build this model" in w for w in everything["warnings"])
    test = evaluate(bundle, m, tmp_path / "test", side="test")
    split = bundle.split()
    assert test["evaluated"] == int((split["side"] == "test").sum())
    assert test["warnings"] == [test["too_small"]]  # the only warning: 8 test cells cannot rank models
    assert "too small to rank models: 8 cells, 4 subjects" in test["too_small"]
    assert set(test["overlap_with_training_split"]) == {"test"}
    with pytest.raises(DataError, match="--side"):
        evaluate(bundle, m, tmp_path / "x", side="holdout")


def test_image_level_data_is_flagged_and_tta(network_bundle, data, tmp_path):  # noqa: F811
    m = read([data / "allidb2"]).iloc[::13]
    r = evaluate(load_bundle(network_bundle), m, tmp_path / "ev", tta=True)
    assert r["protocol"] == "image-level" and "subject" not in r and r["tta"]
    assert any("no subject ids" in w for w in r["warnings"])
    assert np.isclose(sum(sum(row) for row in r["cell"]["confusion_matrix"]), len(m))


def test_classes_absent_from_the_data_are_named_not_averaged(network_bundle, data, tmp_path,  # noqa: F811
                                                             recwarn):
    """Only 'all' cells: macro figures are those of 'all', and the report says 'hem' is absent."""
    from typer.testing import CliRunner

    from leukoscope.cli.verbs import app

    cells = tmp_path / "cells"
    shutil.copytree(data / "cnmc_cells" / "all", cells / "all")
    r = evaluate(load_bundle(network_bundle), read([cells]), tmp_path / "ev")
    cell = r["cell"]
    assert cell["absent_classes"] == ["hem"]
    assert cell["f1_macro"] == pytest.approx(cell["per_class"]["all"]["f1"])
    assert cell["recall_macro"] == pytest.approx(cell["per_class"]["all"]["recall"])
    note = "1 of the model's 2 classes are absent from the evaluated images (hem)"
    assert any(w.startswith(note) for w in r["warnings"])
    assert note in (tmp_path / "ev" / "report.html").read_text().replace("&#39;", "'")
    assert not [w for w in recwarn if "legend" in str(w.message)]  # no curves to label, no warning
    args = ["evaluate", str(network_bundle), str(cells), "--out", str(tmp_path / "cli")]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert note in " ".join(out.stdout.split())


@pytest.fixture(scope="module")
def saturated(data, tmp_path_factory):  # noqa: F811
    """A logistic regression on C-NMC whose calibration (a low temperature) saturates its probabilities."""
    from typer.testing import CliRunner

    from leukoscope.cli.verbs import app

    out = tmp_path_factory.mktemp("saturated") / "run"
    res = CliRunner().invoke(app, ["train", str(data / "cnmc_sample"), str(data / "cnmc_cells"), "--model",
                                   "logistic_regression", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out / "bundle"


def test_predictions_csv_reproduces_the_reported_auc(saturated, data, tmp_path):
    from sklearn.metrics import roc_auc_score

    b = load_bundle(saturated)
    r = evaluate(b, read([data / "cnmc_sample", data / "cnmc_cells"]), tmp_path / "ev", side="test")
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert b.temperature < 0.2  # the case that rounding to 6 decimals broke: probabilities of 1e-20
    assert roc_auc_score(pred["label"] == "hem", pred["p_hem"]) == pytest.approx(r["cell"]["roc_auc"])


def test_a_split_file_whose_side_was_trained_on_is_warned(saturated, data, tmp_path):
    from leukoscope.data.splits import read_split, train_val_test, write_split

    m = read([data / "cnmc_sample", data / "cnmc_cells"])
    write_split(train_val_test(m, test=0.4, seed=3), tmp_path / "s.csv")
    r = evaluate(load_bundle(saturated), m, tmp_path / "ev", split=read_split(tmp_path / "s.csv"))
    seen = r["overlap_with_training_split"]
    assert seen.get("train", 0) + seen.get("val", 0) > 0
    assert any("were used to build this model" in w for w in r["warnings"])


def test_numeric_labels_are_read_back_from_the_bundle_as_class_names(data, tmp_path):
    from typer.testing import CliRunner

    from leukoscope.cli.verbs import app

    rows = [f"{f},{int(cls == 'Pro')}" for cls in ("Benign", "Pro")
            for f in sorted((data / "aria_all" / cls).iterdir())[:15]]
    (tmp_path / "num.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    res = CliRunner().invoke(app, ["train", str(tmp_path / "num.csv"), "--model", "logistic_regression",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    b = load_bundle(tmp_path / "run" / "bundle")
    split = b.split()
    assert b.classes == ["0", "1"] and set(split["label"]) == {"0", "1"}
