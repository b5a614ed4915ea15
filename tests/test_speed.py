"""Start-up and pipeline of prediction (#24): what the ONNX path imports, reduced-size JPEG decoding,
and the pipeline giving the numbers of the plain bundle call."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukoscope.bundle import load_bundle
from leukoscope.data.images import load_rgb, resize_square
from leukoscope.predict.local import scored_batches
from leukoscope.probability import softmax_t
from use_support import network_bundle, onnx_bundle, sample_paths  # noqa: F401

HEAVY = ("torch", "pandas", "matplotlib", "sklearn", "scipy", "pydantic", "rich")

#: ``leukoscope predict`` in a fresh interpreter, then the heavy libraries it imported and how many
#: objects it froze for the exit.
PROBE = """
import gc, json, sys
from leukoscope.cli import main
try:
    main()  # Typer reads sys.argv[1:]: the arguments after -c
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps([sorted(m for m in {heavy} if m in sys.modules), gc.get_freeze_count()]))
"""


def test_onnx_predict_imports_no_heavy_library(onnx_bundle, data, tmp_path):  # noqa: F811
    """The CLI on an exported bundle needs ONNX Runtime, Pillow and numpy only: torch, pandas,
    scipy, matplotlib or scikit-learn would add seconds of start-up to every run, pydantic
    (typer's own coercion of the options) a third of a second, and Rich, with nothing to draw
    (output into a file or pipe), 19 ms. What is left when it is done is frozen, so the
    interpreter's exit does not walk it in a last garbage collection (40-50 ms)."""
    images = [str(p) for p in sample_paths(data, n_allidb=4)[:6]]
    out = tmp_path / "p.csv"
    args = ["predict", str(onnx_bundle), *images, "--out", str(out), "--runtime", "onnx"]
    run = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                         text=True, check=True)
    heavy, frozen = json.loads(run.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert frozen > 10_000  # Typer, numpy, ONNX Runtime: every object still alive
    assert len(pd.read_csv(out)) == len(images)


def test_pipeline_gives_the_bundles_own_numbers(onnx_bundle, data):  # noqa: F811
    """Decoding and preprocessing on the worker thread change nothing: the same probabilities as
    ``predict_proba`` on the decoded images, rows in input order, an unreadable file skipped."""
    bundle = load_bundle(onnx_bundle, runtime="onnx")
    paths = sample_paths(data, n_allidb=10)[:21]
    bad = Path(__file__)  # not an image
    got_paths, parts, skipped = [], [], []
    for ok, logits, _, bad_ones in scored_batches(bundle, [*paths[:5], bad, *paths[5:]], batch_size=4):
        got_paths += ok
        parts.append(logits)
        skipped += bad_ones
    assert got_paths == paths and [s[0] for s in skipped] == [str(bad)]
    views = np.concatenate(parts)
    assert views.shape == (len(paths), 1, len(bundle.classes))
    expected = bundle.predict_proba([load_rgb(p) for p in paths])
    np.testing.assert_array_equal(softmax_t(views[:, 0], bundle.temperature), expected)


def test_decoding_to_the_input_size_matches_resizing_after(tmp_path, data):
    """``load_rgb(size=)`` gives exactly what a whole decode resized by ``resize_square`` gives (what
    training and the Python API see), large JPEGs included: a PBC cell (360 px), a 900 px one, a PNG,
    a grey image. None is decoded at reduced scale."""
    cell = Image.open(next((data / "aria_all" / "Benign").glob("*.jpg"))).convert("RGB")
    big, png, grey = tmp_path / "big.jpg", tmp_path / "big.png", tmp_path / "grey.png"
    cell.resize((900, 700)).save(big, quality=95)
    cell.resize((900, 700)).save(png)
    cell.convert("L").save(grey)
    small = next((data / "aria_all" / "Benign").glob("*.jpg"))
    pbc = next((data / "pbc" / "neutrophil").glob("*.jpg"))
    for path in (small, big, png, grey, pbc):
        np.testing.assert_array_equal(load_rgb(path, size=128), resize_square(load_rgb(path), 128))


def test_int8_weights_follow_the_cpu(onnx_bundle, tmp_path, monkeypatch):  # noqa: F811
    """int8 export uses 8-bit weights where the CPU has VNNI (int32 sums) and 7-bit ones otherwise;
    an 8-bit export is refused, in one line, on a CPU without VNNI (its int16 sums would overflow)."""
    import shutil

    import leukoscope.bundle.onnx as bundle_onnx
    from leukoscope.errors import BundleError
    from leukoscope.models.onnx import has_vnni

    info = json.loads((onnx_bundle / "config.json").read_text())["onnx"]
    assert info["int8_vnni"] is has_vnni()
    assert f"{8 if has_vnni() else 7}-bit int8 weights" in info["int8_scheme"]
    copy = tmp_path / "b"
    shutil.copytree(onnx_bundle, copy)
    config = json.loads((copy / "config.json").read_text())
    config["onnx"]["int8_vnni"] = True
    (copy / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(bundle_onnx, "has_vnni", lambda: False)  # a CPU without VNNI
    with pytest.raises(BundleError, match="VNNI") as e:
        load_bundle(copy, runtime="onnx-int8")
    assert "\n" not in str(e.value)
    assert load_bundle(copy, runtime="onnx") is not None  # fp32 still runs


def test_auto_runs_int8_only_where_it_agreed_with_fp32_on_a_cpu_with_vnni(network_bundle, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    """``export --int8`` measures how often int8 makes fp32's call (the ``predicted`` column of predict) on
    the train / val cells it did not calibrate on, and how much faster it ran; ``--runtime auto``
    then runs int8 where that was >= 99 % of >= 50 cells and the CPU has VNNI (what makes int8
    pay), fp32 otherwise."""
    import shutil

    from typer.testing import CliRunner

    import leukoscope.bundle.onnx as bundle_onnx
    from leukoscope.bundle.export import calibration_paths
    from leukoscope.cli.verbs import app

    b = tmp_path / "b"
    shutil.copytree(network_bundle, b)
    train_val = calibration_paths(b, 10**6)
    calibrate = [arg for path in train_val[:16] for arg in ("--calibration", path)]
    res = CliRunner().invoke(app, ["export", str(b), "--onnx", "--int8", *calibrate])
    held_out = train_val[16:]
    said = " ".join(res.output.split())
    assert res.exit_code == 0, said
    assert re.search(rf"on \d+ of {len(held_out)} \(\d+\.\d %\) train/val cells", said), said
    assert "--runtime auto runs" in res.output
    info = json.loads((b / "config.json").read_text())["onnx"]
    assert info["int8_agreement_images"] == len(held_out) > 0 and info["int8_speedup"] > 0
    labels = {}
    for runtime in ("onnx", "onnx-int8"):
        out = tmp_path / f"{runtime}.csv"
        res = CliRunner().invoke(app, ["predict", str(b), *held_out, "--out", str(out), "--runtime", runtime])
        assert res.exit_code == 0, res.output
        labels[runtime] = pd.read_csv(out)["predicted"]
    assert info["int8_agreement"] == pytest.approx((labels["onnx"] == labels["onnx-int8"]).mean(), abs=1e-4)

    config = json.loads((b / "config.json").read_text())

    def auto_file(agreement: float, images: int) -> str:
        config["onnx"] |= {"int8_agreement": agreement, "int8_agreement_images": images}
        (b / "config.json").write_text(json.dumps(config))
        return str(load_bundle(b).model_file)

    monkeypatch.setattr(bundle_onnx, "has_vnni", lambda: True)
    assert auto_file(0.995, 256) == "model.int8.onnx"
    assert auto_file(0.985, 256) == "model.onnx"  # disagrees too often
    assert auto_file(1.0, 40) == "model.onnx"  # too few cells to tell
    monkeypatch.setattr(bundle_onnx, "has_vnni", lambda: False)
    assert auto_file(0.995, 256) == "model.onnx"  # int8 would not pay
    (b / "model.int8.onnx").unlink()
    monkeypatch.setattr(bundle_onnx, "has_vnni", lambda: True)
    assert auto_file(0.995, 256) == "model.onnx"
