"""The leaderboard: grouped CV over every model, failures and time-outs listed, outputs written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from leukoscope.cli.verbs import app
from leukoscope.crossval import run_models
from leukoscope.data.manifest import SYNTHETIC_WARNING
from leukoscope.data.readers import read
from leukoscope.leaderboard import benchmark, to_markdown, write_leaderboard
from leukoscope.models import registry

BROKEN = "broken-for-test"
SMALL = {"size": 64}  # a small working size keeps feature extraction quick


@pytest.fixture
def broken_model() -> Iterator[str]:
    """A model registered only for this test, whose fit always raises."""

    @registry.register_model(BROKEN, family="classical")
    def broken(seed: int = 0):
        """Logistic regression with an invalid C (fit raises)."""
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=-1.0)

    try:
        yield BROKEN
    finally:
        registry.MODELS._entries.pop(BROKEN, None)


def test_failing_model_does_not_stop_the_others(synthetic2: Path, broken_model: str, tmp_path: Path) -> None:
    m = read([synthetic2])
    lb, split, X = benchmark(m, k=4, models=["lda", broken_model, "knn"], seed=0, feature_params=SMALL)
    table = lb.table
    assert list(table["model"][:2]) in (["lda", "knn"], ["knn", "lda"])  # ok rows first
    assert table["balanced_accuracy_mean"].iloc[0] >= table["balanced_accuracy_mean"].iloc[1]
    bad = table.set_index("model").loc[broken_model]
    assert bad["status"] == "failed" and "InvalidParameterError" in bad["error"]
    assert (table.loc[table["status"] == "ok", "balanced_accuracy_mean"] > 0.8).all()
    # the CV runs on the train and val sides (6 of the 8 subjects); the test side (2) is held out
    assert lb.folds == 3 and lb.n_groups == 6 and lb.n_images == 36 and lb.held_out == 12
    assert len(X) == len(split) == 48 and (split.loc[split["side"] == "test", "fold"] == -1).all()
    # deduped, so no dedupe note; 36 cells of 6 subjects are too few to rank models
    assert lb.protocol == "subject-grouped" and lb.too_small and "too small to rank models" in lb.too_small
    assert lb.warning == f"{SYNTHETIC_WARNING}; {lb.too_small}"
    assert lb.best in ("lda", "knn")

    paths = write_leaderboard(lb, tmp_path / "out")
    csv = pd.read_csv(paths["csv"])
    assert set(csv["protocol"]) == {"subject-grouped"}
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "f1_weighted", "f1_macro", "fit_s", "predict_s"):
        assert {f"{key}_mean", f"{key}_std"} <= set(csv.columns)
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "f1_weighted", "f1_macro"):  # a 95% interval each
        ok = csv[csv["status"] == "ok"]
        assert (ok[f"{key}_lo"] <= ok[f"{key}_pooled"]).all()
        assert (ok[f"{key}_pooled"] <= ok[f"{key}_hi"]).all()
    md = paths["md"].read_text()
    assert "subject-grouped" in md and broken_model in md and "Balanced Accuracy" in md
    assert "too small to rank models" in md and "too small to rank models" in paths["html"].read_text()
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and "subject-grouped" in html and "InvalidParameterError" in html


def test_time_limit_stops_a_slow_model() -> None:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), np.repeat([0, 1], 20)
    folds = np.tile([0, 1], 20)
    slow = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=10**7, tol=0, n_iter_no_change=10**8)
    done = []
    res = run_models({"slow": slow, "lda": LinearDiscriminantAnalysis()}, X, y, folds, ["a", "b"],
                     timeout=3.0, jobs=2, on_done=lambda name, r: done.append(name))
    assert res["slow"]["status"] == "timeout" and "timed out after 3 s" in res["slow"]["error"]
    assert len(res["lda"]["folds"]) == 2 and sorted(done) == ["lda", "slow"]


def test_multiclass_and_image_level(data: Path) -> None:
    m = read([data / "aria_all"])
    m = m.groupby("label").head(8).reset_index(drop=True)
    lb, _, _ = benchmark(m, k=3, models=["gaussian_nb", "logistic_regression"], feature_params=SMALL)
    assert lb.protocol == "image-level" and "no subject ids" in lb.warning
    assert len(lb.classes) == 4 and (lb.table["status"] == "ok").all()
    assert lb.table["roc_auc_mean"].between(0, 1).all()
    md = to_markdown(lb)
    assert "image-level" in md and "no subject ids" in md


def test_leaderboard_shows_display_names_as_the_evaluation_report_does(data: Path, tmp_path: Path) -> None:
    lb, _, _ = benchmark(read([data / "cnmc_sample"]), k=2, models=["lda"], feature_params=SMALL)
    assert lb.classes == ["all", "hem"]
    assert "- classes: all (ALL blast), hem (normal)\n" in to_markdown(lb)
    paths = write_leaderboard(lb, tmp_path / "lb")
    assert "classes all (ALL blast), hem (normal); seed" in paths["html"].read_text()
    assert "- classes: all (ALL blast), hem (normal)\n" in paths["md"].read_text()
    run = json.loads(paths["json"].read_text())
    assert run["classes"] == ["all", "hem"] and run["display_names"] == {"all": "ALL blast", "hem": "normal"}


def test_cli_benchmark_and_features(synthetic2: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "lb"
    res = runner.invoke(app, ["benchmark", str(synthetic2), "--out", str(out), "--models", "lda,gaussian*",
                              "--cv", "3", "--save-best", str(tmp_path / "best")])
    assert res.exit_code == 0, res.output
    assert "subject-grouped" in res.output and "gaussian_nb" in res.output
    assert "too small to rank models" in res.output
    assert (out / "leaderboard.html").is_file() and (tmp_path / "best" / "pipeline.skops").is_file()

    res = runner.invoke(app, ["benchmark", str(synthetic2), "--out", str(out), "--models", "nosuch"])
    assert res.exit_code == 1 and "no classical model matches 'nosuch'" in res.output

    parquet = tmp_path / "f.parquet"
    res = runner.invoke(app, ["data", "features", str(synthetic2), "--out", str(parquet)])
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(parquet)
    assert len(table) == 48 and {"path", "label", "subject", "nucleus_area", "glcm_contrast_d1"} <= set(table)
