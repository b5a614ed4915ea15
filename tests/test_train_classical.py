"""``leukoscope train --model <classical>``: every registered classical model fits on real ALL-IDB2 cells
into RUN/bundle with a train / val / test split, the same test side a network gets, and the bundle
is evaluated, predicted with and served like any other."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from leukoscope.bundle import load_bundle
from leukoscope.cli.verbs import app
from leukoscope.data.images import load_rgb
from leukoscope.data.readers import read
from leukoscope.features import list_feature_kinds
from leukoscope.models.registry import list_models
from leukoscope.train import TrainConfig, train
from link_support import allidb2_cells

runner = CliRunner()


@pytest.fixture(scope="module")
def cells(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real ALL-IDB2 cells, 20 blasts and 20 normal ones, hard-linked (or copied) into a tmp folder."""
    folder = allidb2_cells(data, tmp_path_factory.mktemp("allidb40") / "allidb2", per_class=20, step=6)
    assert len(list(folder.iterdir())) == 40
    return folder


def sides(split: pd.DataFrame | None) -> pd.Series:
    assert split is not None
    return split.set_index("path")["side"].sort_index()


@pytest.mark.parametrize("name", list_models(family="classical"))
def test_train_fits_every_classical_model_into_a_bundle(name: str, cells: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(cells), "--model", name, "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "held-out figures (image-level)" in res.output and "bundle:" in res.output
    bundle = load_bundle(out / "bundle")
    assert bundle.family == "classical" and bundle.config["model"] == name
    assert bundle.config["features"]["kind"] == "handcrafted" and bundle.config["protocol"] == "image-level"
    split = pd.read_csv(out / "bundle" / "split.csv")
    assert set(split["side"]) == {"train", "val", "test"} and len(split) == 40
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == int((split["side"] == "test").sum())
    assert {"ece_before", "ece_after"} <= set(metrics["validation"])
    assert bundle.temperature == json.loads((out / "bundle" / "config.json").read_text())["temperature"]
    assert (out / ".done").is_file() and TrainConfig.build(out / "config.yaml").model == name


@pytest.mark.parametrize("kind", list_feature_kinds())
def test_train_fits_on_the_feature_kind_asked_for(kind: str, cells: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(cells), "--model", "gaussian_nb", "--features", kind,
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    bundle = load_bundle(out / "bundle")
    assert bundle.config["features"]["kind"] == kind
    assert json.loads((out / "config.json").read_text())["features"] == kind
    images = [load_rgb(p) for p in sorted(cells.iterdir())[:3]]
    direct = bundle.pipeline.predict_proba(bundle.extractor.compute(images))
    np.testing.assert_array_equal(bundle.predict_proba(images).argmax(1), direct.argmax(1))


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_classical_run_is_evaluated_predicted_served_and_replayed(cells: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from leukoscope.serve.app import create_app

    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(cells), "--model", "logistic_regression", "--out", str(out)])
    assert res.exit_code == 0, res.output
    bundle_dir = out / "bundle"
    bundle = load_bundle(bundle_dir)
    test_side = sides(bundle.split())
    n_test = int((test_side == "test").sum())

    res = runner.invoke(app, ["evaluate", str(bundle_dir), str(cells), "--side", "test",
                              "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["evaluated"] == n_test and ev["overlap_with_training_split"] == {"test": n_test}
    assert ev["calibration"]["temperature"] == bundle.temperature

    res = runner.invoke(app, ["predict", str(bundle_dir), str(cells), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "subject", "predicted", *(f"p_{c}" for c in bundle.classes), "unfamiliarity",
                       "unfamiliar"]
    assert len(rows) == 41 and bundle.unfamiliar is not None and bundle.unfamiliar.standardise

    one = sorted(cells.iterdir())[0]
    with TestClient(create_app(bundle_dir)) as client:
        assert client.get("/api/model").json()["family"] == "classical"
        r = client.post("/api/predict", files=[("files", (one.name, one.read_bytes(), "image/tiff"))])
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()["results"][0]["probabilities"]
    np.testing.assert_allclose([got[c] for c in bundle.classes], bundle.predict_proba([load_rgb(one)])[0],
                               atol=1e-5)

    fitted = (bundle_dir / "pipeline.skops").stat().st_mtime_ns
    res = runner.invoke(app, ["train", str(cells), "--model", "logistic_regression", "--out", str(out)])
    assert res.exit_code == 0 and (bundle_dir / "pipeline.skops").stat().st_mtime_ns == fitted  # not refitted
    res = runner.invoke(app, ["train", str(cells), "--model", "logistic_regression", "--out", str(out),
                              "--seed", "1"])
    assert res.exit_code == 1 and "other settings" in res.output and "Traceback" not in res.output
    replay = tmp_path / "replay"
    res = runner.invoke(app, ["train", str(cells), "--config", str(out / "config.yaml"),
                              "--out", str(replay)])
    assert res.exit_code == 0, res.output
    again = load_bundle(replay / "bundle")
    assert sides(again.split()).equals(test_side)
    images = [load_rgb(p) for p in sorted(cells.iterdir())[::7]]
    np.testing.assert_array_equal(again.predict_proba(images), bundle.predict_proba(images))


def test_classical_and_network_runs_hold_out_the_same_test_side(cells: Path, tmp_path: Path) -> None:
    m = read([cells])
    net = train(m, TrainConfig.build(model="leukonet", epochs=1, img_size=32, batch_size=8, seed=5),
                tmp_path / "net")
    classical = train(m, TrainConfig.build(model="gaussian_nb", seed=5), tmp_path / "classical")
    assert net.family == "network" and classical.family == "classical"
    assert set(sides(classical.split())) == {"train", "val", "test"}
    assert sides(net.split()).equals(sides(classical.split()))


@pytest.mark.parametrize("args, message", [
    (["--model", "svc", "--epochs", "3"], "--model svc is a classical model; these settings are for networks "
                                          "only: --epochs"),
    (["--model", "knn", "--cv", "3"], "networks only: --cv"),
    (["--model", "svc", "--features", "shape"], "--features must be one of both, colour, deep, handcrafted"),
    (["--model", "leukonet", "--features", "deep"], "--features is for classical models"),
    (["--model", "nosuch"], "--model: unknown model 'nosuch'; choose from:"),
])
def test_train_settings_that_do_not_fit_the_model_are_one_line(args: list[str], message: str, cells: Path,
                                                               tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", str(cells), "--out", str(tmp_path / "run"), *args])
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output and res.output.count("error:") == 1
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def few(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 aria_all cells of each of 4 classes: --subset 0.3 leaves a training side of 4 (one per class)."""
    import shutil

    root = tmp_path_factory.mktemp("few") / "aria"
    for c in ("Benign", "Early", "Pre", "Pro"):
        (root / c).mkdir(parents=True)
        for f in sorted((data / "aria_all" / c).iterdir())[:8]:
            shutil.copy(f, root / c / f.name)
    return root


@pytest.mark.parametrize("model", ["knn", "svc", "lda"])
def test_a_training_side_too_small_for_the_model_is_one_line(few: Path, tmp_path: Path, model: str) -> None:
    res = runner.invoke(app, ["train", str(few), "--model", model, "--subset", "0.3", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "the training side (4 images) is too small for this model" in " ".join(res.output.split())


def test_one_training_cell_per_class_still_gets_an_unfamiliarity_score(few: Path, tmp_path: Path) -> None:
    """Cells that do not vary within their class gave a singular covariance (LinAlgError, no bundle)."""
    res = runner.invoke(app, ["train", str(few), "--model", "logistic_regression", "--subset", "0.3", "--out",
                              str(tmp_path / "lr")])
    assert res.exit_code == 0, res.output
    assert load_bundle(tmp_path / "lr" / "bundle").unfamiliar is not None
