"""Grad-CAM for networks (torch and ONNX bundles) and feature attributions for classical bundles."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from leukoscope.bundle import load_bundle
from leukoscope.bundle.classical import log_probabilities
from leukoscope.data.images import load_rgb
from leukoscope.errors import BundleError
from leukoscope.explain import INDEX_FILE, explain, feature_contributions, gradcam
from leukoscope.filenames import NAME_ERRORS
from leukoscope.predict.local import predict
from leukoscope.predict.unfamiliar import UNFAMILIAR
from leukoscope.probability import softmax_t
from use_support import classical_bundle, network_bundle, onnx_bundle  # noqa: F401


@pytest.fixture(scope="module")
def cell_path(data):
    return sorted((data / "cnmc_cells" / "all").glob("*.png"))[0]


@pytest.fixture(scope="module")
def cell(cell_path):
    return load_rgb(cell_path)


def test_gradcam_heat_map_and_overlay(network_bundle, onnx_bundle, cell):  # noqa: F811
    heat, over = gradcam(load_bundle(network_bundle), cell)
    assert heat.shape == cell.shape[:2] and heat.dtype == np.float64
    # normalised to 1 on the model's grid; resizing to the image's size may shave the peak a little
    assert heat.min() >= 0 and 0.99 <= heat.max() <= 1.0 + 1e-9
    assert over.shape == cell.shape and over.dtype == np.uint8
    assert not np.array_equal(over, cell)
    # an ONNX-served bundle is explained with its torch weights: same map
    heat_onnx, _ = gradcam(load_bundle(onnx_bundle), cell)
    np.testing.assert_allclose(heat_onnx, heat, atol=1e-4)


def test_gradcam_refuses_classical(classical_bundle, cell):  # noqa: F811
    with pytest.raises(BundleError, match="network bundle"):
        gradcam(load_bundle(classical_bundle), cell)


def test_explain_network_writes_pngs_and_index(network_bundle, data, tmp_path):  # noqa: F811
    folder = data / "cnmc_cells" / "hem"
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    out = explain(load_bundle(network_bundle), [folder, bad], tmp_path / "ex")
    assert len(out) == len(list(folder.glob("*.png")))
    w, h = Image.open(out[0]).size
    assert w == 2 * h  # the cell and its overlay side by side
    rows = list(csv.DictReader((tmp_path / "ex" / INDEX_FILE).read_text().splitlines()))
    assert len(rows) == len(out) + 1 and rows[-1]["skipped"] == "not a readable image"


def test_classical_contributions(classical_bundle, cell, cell_path, tmp_path):  # noqa: F811
    bundle = load_bundle(classical_bundle)
    df = feature_contributions(bundle, cell)
    assert list(df.columns) == ["feature", "value", "train_mean", "contribution"]
    assert len(df) == len(bundle.extractor.names())
    assert df["contribution"].abs().is_monotonic_decreasing
    p = bundle.predict_proba([cell])[0]
    assert df.attrs["predicted"] == bundle.classes[int(p.argmax())]
    assert df.attrs["probability"] == pytest.approx(p.max(), abs=1e-6)
    assert df["contribution"].abs().max() > 0
    # the top contribution, recomputed by hand: the calibrated log-odds of the call, minus the same with
    # that feature at its training mean
    x = bundle.features([cell])[0].astype(np.float64)
    j = bundle.extractor.names().index(df["feature"][0])
    moved = x.copy()
    moved[j] = bundle.pipeline.named_steps["scale"].mean_[j]
    call = int(p.argmax())

    def log_odds(row):
        z = log_probabilities(bundle.pipeline, row[None], 2)[0] / bundle.temperature
        return z[call] - z[1 - call]

    assert df["contribution"][0] == pytest.approx(log_odds(x) - log_odds(moved), abs=1e-6)
    # a sharp calibration saturates the probability of the call, not its log-odds
    sharp = _rewritten(classical_bundle, tmp_path / "sharp", temperature=bundle.temperature / 50)
    assert softmax_t(log_probabilities(sharp.pipeline, x[None], 2), sharp.temperature)[0].max() > 1 - 1e-9
    assert feature_contributions(sharp, cell)["contribution"].abs().max() > 1
    [png] = explain(bundle, [cell_path], tmp_path / "ex")
    assert png.name == f"{cell_path.stem}_features.png" and png.stat().st_size > 1000
    table = (tmp_path / "ex" / f"{cell_path.stem}_features.csv").read_text().splitlines()
    assert list(csv.DictReader(table))[0]["feature"] == df["feature"][0]


def _rewritten(bundle, folder, **changes):
    """A copy of ``bundle`` at ``folder`` with top-level config keys changed (None: removed)."""
    shutil.copytree(bundle, folder)
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        cfg[key] = value(cfg) if callable(value) else value
        if cfg[key] is None:
            del cfg[key]
    (folder / "config.json").write_text(json.dumps(cfg))
    return load_bundle(folder)


def _index(folder):
    with open(folder / INDEX_FILE, newline="", encoding="utf-8", errors=NAME_ERRORS) as f:
        return list(csv.DictReader(f))


def _predicted(bundle, path, out):
    predict(bundle, [path], out)
    with open(out, newline="", encoding="utf-8", errors=NAME_ERRORS) as f:
        return next(csv.DictReader(f))["predicted"]


@pytest.mark.parametrize("kind", ["network", "classical"])
def test_explain_explains_the_call_predict_makes(kind, network_bundle, classical_bundle, cell,  # noqa: F811
                                                 cell_path, tmp_path):
    """An operating point can call a class that is not the most probable: that call is the one explained."""
    source = network_bundle if kind == "network" else classical_bundle
    probs = load_bundle(source).predict_proba([cell])[0]
    other = load_bundle(source).classes[int(probs.argmin())]  # never the argmax, always called at 0
    bundle = _rewritten(source, tmp_path / "b", operating_point={"positive": other, "threshold": 0.0},
                        unfamiliar=None)  # the cell may be unfamiliar to the tiny model: not this test's call
    assert _predicted(bundle, cell_path, tmp_path / "p.csv") == other
    [row] = _index_of(bundle, cell_path, tmp_path / "ex")
    assert row["predicted"] == other and row["explained"] == other
    assert float(row["probability"]) == pytest.approx(probs.min(), abs=1e-6)
    if kind == "classical":
        df = feature_contributions(bundle, cell)
        assert df.attrs["predicted"] == other and df.attrs["probability"] == pytest.approx(probs.min())


def _index_of(bundle, path, out):
    explain(bundle, [path], out)
    return _index(out)


def test_an_unfamiliar_cell_is_called_unfamiliar(network_bundle, cell_path, tmp_path):  # noqa: F811
    """predict withholds the class of a flagged cell; explain says so, and which class's evidence it shows."""
    bundle = _rewritten(network_bundle, tmp_path / "b",
                        unfamiliar=lambda cfg: cfg["unfamiliar"] | {"threshold": -1e300})
    assert _predicted(bundle, cell_path, tmp_path / "p.csv") == UNFAMILIAR
    [row] = _index_of(bundle, cell_path, tmp_path / "ex")
    probs = bundle.predict_proba([cell_path])[0]
    assert row["predicted"] == UNFAMILIAR and row["explained"] == bundle.classes[int(probs.argmax())]


def test_explain_non_utf8_and_long_names(cell_path, classical_bundle, tmp_path):  # noqa: F811
    """File names are bytes: the index keeps them (surrogateescape, as predict), the PNGs get safe names."""
    src = tmp_path / "in"
    src.mkdir()
    odd = src / os.fsdecode(b"cell\xff.png")
    long = src / ("x" * 250 + ".png")
    upper = src / "CELL.png"  # a case-insensitive file system: not the same output as cell.png
    lower = src / "cell.png"
    bad = src / os.fsdecode(b"bad\xfe.png")
    for p in (odd, long, upper, lower):
        shutil.copy(cell_path, p)
    bad.write_text("nope")
    skipped: list[tuple[str, str]] = []
    written = explain(load_bundle(classical_bundle), [odd, long, upper, lower, bad], tmp_path / "ex",
                      lambda p, r: skipped.append((p, r)))
    rows = _index(tmp_path / "ex")
    assert [r["path"] for r in rows] == [str(odd), str(long), str(upper), str(lower), str(bad)]
    assert [r["explanation"] for r in rows] == [p.name for p in written] + [""]
    assert skipped == [(str(bad), "not a readable image")]
    for p in written:
        p.name.encode("utf-8")  # no undecodable bytes
        assert len(os.fsencode(p.name)) < 200 and p.is_file()
    assert [p.name for p in (written[0], *written[2:])] == ["cell\ufffd_features.png", "CELL_features.png",
                                                          "cell-2_features.png"]


def test_names_a_path_or_a_figure_would_misread(cell_path, classical_bundle, network_bundle, tmp_path):  # noqa: F811
    """``..png`` (stem ".") stays inside --out; ``$x^{2$`` is a title, not mathtext; both explained."""
    src = tmp_path / "in"
    src.mkdir()
    dots, math = src / "..png", src / "cell_$x^{2$.png"
    for p in (dots, math):
        shutil.copy(cell_path, p)
    for bundle in (classical_bundle, network_bundle):
        out = tmp_path / f"ex-{bundle.name}-{bundle.parent.name}"
        written = explain(load_bundle(bundle), [dots, math], out)
        assert len(written) == 2 and all(p.parent == out and p.is_file() for p in written)
        assert written[0].name.startswith("image_")
    assert not list(tmp_path.glob("ex-*_*.png"))  # nothing beside the folders


def test_explain_with_nothing_to_explain_is_one_line(network_bundle, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from leukoscope.cli.verbs import app

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not an image")
    for folder, said in (("empty", "no image files found in:"), ("bad", "nothing explained: none of the 1")):
        res = CliRunner().invoke(app, ["explain", str(network_bundle), str(tmp_path / folder), "--out",
                                       str(tmp_path / f"out-{folder}")])
        assert res.exit_code == 1 and said in res.output and "Traceback" not in res.output, res.output
