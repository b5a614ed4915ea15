"""Temperature scaling: lowers ECE of an overconfident model, never changes the call, is applied."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from leukoscope.bundle import load_bundle
from leukoscope.data.images import load_rgb
from leukoscope.evaluate.calibration import ece, fit_temperature
from leukoscope.probability import softmax_t
from use_support import network_bundle  # noqa: F401


@pytest.fixture(scope="module")
def logits_and_labels(data, network_bundle):  # noqa: F811
    """Real logits of the tiny network on 260 ALL-IDB2 cells (label 1 = blast = 'all')."""
    bundle = load_bundle(network_bundle, runtime="torch")
    paths = sorted((data / "allidb2").glob("*.tif"))
    logits = bundle.logits([load_rgb(p) for p in paths])
    y = np.array([bundle.classes.index("all" if p.stem.endswith("_1") else "hem") for p in paths])
    return logits, y


def test_temperature_lowers_ece_of_an_overconfident_model(logits_and_labels):
    logits, y = logits_and_labels
    over = logits * 5.0  # the same model made overconfident
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    val, test = idx[: len(y) // 2], idx[len(y) // 2:]
    t = fit_temperature(over[val], y[val])
    before, after = ece(softmax_t(over[test]), y[test]), ece(softmax_t(over[test], t), y[test])
    assert t > 1.0  # an overconfident model gets cooled down
    assert after < before * 0.8
    # the argmax (the call) never changes
    assert np.array_equal(softmax_t(over, t).argmax(axis=1), over.argmax(axis=1))


def test_bundle_applies_its_temperature(network_bundle, data, tmp_path):  # noqa: F811
    copy = tmp_path / "b"
    shutil.copytree(network_bundle, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["temperature"] = 3.0
    (copy / "config.json").write_text(json.dumps(cfg))
    bundle = load_bundle(copy, runtime="torch")
    images = [load_rgb(p) for p in sorted((data / "cnmc_cells").rglob("*.png"))[:4]]
    np.testing.assert_allclose(bundle.predict_proba(images), softmax_t(bundle.logits(images), 3.0))
