"""Classical bundles: save the leaderboard's winner, load it back, identical predictions; safe loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from leukoscope.bundle import load_bundle
from leukoscope.bundle.classical import WEIGHTS, ClassicalBundle, load_pipeline
from leukoscope.data.images import load_rgb
from leukoscope.data.readers import read
from leukoscope.errors import BundleError
from leukoscope.leaderboard import benchmark, save_best


@pytest.fixture(scope="module")
def saved(synthetic2: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    lb, split, X = benchmark(read([synthetic2]), k=3, models=["logistic_regression", "gaussian_nb"],
                             feature_params={"size": 64})
    out = tmp_path_factory.mktemp("bundles") / "best"
    save_best(lb, split, X, out)
    return out, lb


def test_round_trip_gives_identical_predictions(saved: tuple[Path, object], synthetic2: Path) -> None:
    out, lb = saved
    bundle = load_bundle(out)
    assert isinstance(bundle, ClassicalBundle) and bundle.classes == lb.classes == ["blast", "normal"]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == lb.best
    assert config["features"] == {"kind": "handcrafted", "params": {"size": 64}}
    assert config["protocol"] == "subject-grouped" and 0.05 <= config["temperature"] <= 20
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"cross_validation", "validation", "test"} <= set(metrics)
    assert metrics["test"]["n"] == metrics["sides"]["test"] and metrics["dedupe"]

    paths = read([synthetic2])["path"].iloc[::6].tolist()
    images = [load_rgb(p) for p in paths]
    probs = bundle.predict_proba(images)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probs, load_bundle(out).predict_proba(images))
    direct = bundle.pipeline.predict_proba(bundle.extractor.compute(images))
    np.testing.assert_array_equal(probs.argmax(axis=1), direct.argmax(axis=1))
    labels = [bundle.classes.index(p.split(os.sep)[-2]) for p in paths]
    assert (probs.argmax(axis=1) == labels).mean() >= 0.75
    split = bundle.split()
    assert split is not None and set(split["side"]) == {"train", "val", "test"}  # evaluate --side test works


def test_refuses_types_outside_the_allow_list(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    sio.dump(FunctionTransformer(func=os.system), tmp_path / WEIGHTS)
    with pytest.raises(BundleError, match="allow-list.*system"):
        load_pipeline(tmp_path / WEIGHTS)


def test_broken_bundles_name_the_problem(saved: tuple[Path, object], tmp_path: Path) -> None:
    import shutil

    out, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(BundleError, match="pipeline.skops"):
        load_bundle(copy)
    (copy / WEIGHTS).unlink()
    with pytest.raises(BundleError, match="no pipeline.skops"):
        load_bundle(copy)
