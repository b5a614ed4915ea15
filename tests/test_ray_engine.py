"""``predict --engine ray``: a real local Ray instance gives the local engine's rows, labels and numbers."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from leukoscope.cli.verbs import app
from leukoscope.data.synthetic import make_synthetic
from use_support import network_bundle  # noqa: F401

runner = CliRunner()


@pytest.fixture
def exported(network_bundle: Path, tmp_path: Path) -> Path:  # noqa: F811
    """A copy of the tiny trained network bundle with its fp32 ONNX export (what Ray actors run)."""
    from leukoscope.bundle.export import export_onnx

    out = tmp_path / "bundle"
    shutil.copytree(network_bundle, out)
    export_onnx(out)
    return out


@pytest.fixture
def cells(tmp_path: Path) -> Path:
    """300 synthetic cells in class folders, plus an undecodable file and an empty one."""
    root = make_synthetic(tmp_path / "cells", n_subjects=10, per_subject=30, size=40, seed=3)
    (root / "blast" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "normal" / "empty.jpg").write_bytes(b"")
    return root


def test_ray_engine_matches_local(exported, cells, tmp_path):
    local_csv, ray_dir = tmp_path / "local.csv", tmp_path / "ray"
    r = runner.invoke(app, ["predict", str(exported), str(cells), "--out", str(local_csv),
                            "--batch-size", "32"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(exported), str(cells), "--out", str(ray_dir), "--engine", "ray",
                            "--num-cpus", "2", "--batch-size", "32", "--csv"])
    assert r.exit_code == 0, r.output
    assert "OnnxBundle" in r.output and "2 unreadable file(s) skipped" in r.output
    local = pd.read_csv(local_csv)
    parquet = pd.read_parquet(ray_dir / "predictions.parquet")
    assert len(local) == len(parquet) == 300
    assert list(parquet.columns) == list(local.columns) == ["path", "subject", "predicted", "p_all", "p_hem",
                                                            "unfamiliarity", "unfamiliar"]
    # same rows in the same order, same labels, same probabilities (the local CSV keeps 6 decimals)
    assert parquet["path"].tolist() == local["path"].tolist()
    assert parquet["predicted"].tolist() == local["predicted"].tolist()
    np.testing.assert_allclose(parquet[["p_all", "p_hem"]], local[["p_all", "p_hem"]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(parquet[["p_all", "p_hem"]].sum(axis=1), 1.0, atol=1e-6)
    # the CSV on request is what the local engine writes: the same rows, calls and flags; the scores to
    # float32 precision (a far cell's Mahalanobis distance is ~1e5, and batches differ between the engines)
    ray_csv = pd.read_csv(ray_dir / "predictions.csv")
    pd.testing.assert_frame_equal(ray_csv.drop(columns="unfamiliarity"), local.drop(columns="unfamiliarity"))
    np.testing.assert_allclose(ray_csv["unfamiliarity"], local["unfamiliarity"], rtol=1e-5, atol=1e-5)
    skipped = pd.read_csv(ray_dir / "skipped.csv")
    assert sorted(Path(p).name for p in skipped["path"]) == ["broken.png", "empty.jpg"]
    assert skipped["reason"].str.len().gt(0).all()


def test_awkward_names_unreadable_batches_and_reruns(exported, cells, tmp_path):
    """Names without a subject id or not UTF-8, batches with nothing readable, a bundle without an
    unfamiliarity scorer: the local engine's rows; a rerun without --csv leaves no stale CSV beside them."""
    from leukoscope.predict.ray_engine import import_ray

    config = json.loads((exported / "config.json").read_text())
    del config["unfamiliar"]
    (exported / "config.json").write_text(json.dumps(config))
    (exported / "unfamiliar.safetensors").unlink()
    odd = tmp_path / "odd"
    odd.mkdir()
    sources = sorted((cells / "blast").glob("UID_*"))
    for name, src in zip(["a.png", "b.png", os.fsdecode(b"c\xff.png")], sources, strict=False):
        shutil.copy(src, odd / name)
    for src in (cells / "blast" / "broken.png", cells / "normal" / "empty.jpg"):
        shutil.copy(src, odd / src.name)
    local_csv, out = tmp_path / "local.csv", tmp_path / "ray"

    def predict(*args: str) -> Result:  # batches of one file: blocks with no subject id, or nothing readable
        return runner.invoke(app, ["predict", str(exported), *args, "--batch-size", "1"])

    r = predict(str(odd), "--out", str(local_csv))
    assert r.exit_code == 0, r.output
    ray = import_ray()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # one instance for the three runs
    try:
        r = predict(str(odd), "--out", str(out), "--engine", "ray", "--csv")
        assert r.exit_code == 0, r.output
        assert "2 unreadable file(s) skipped" in r.output
        parquet = pd.read_parquet(out / "predictions.parquet")
        assert [Path(p).name for p in parquet["path"]] == ["a.png", "b.png", "c\\xff.png"]
        assert parquet["subject"].isna().all() and parquet["predicted"].notna().all()
        assert b"/c\xff.png," in (out / "predictions.csv").read_bytes()  # as on disk, like the local CSV
        read = {"encoding": "latin-1", "keep_default_na": False}  # a byte a character: paths compare as bytes
        pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv", **read),
                                      pd.read_csv(local_csv, **read))
        r = predict(str(odd), "--out", str(out), "--engine", "ray")
        assert r.exit_code == 0, r.output
        assert not (out / "predictions.csv").exists()
        r = predict(str(odd / "broken.png"), str(odd / "empty.jpg"), "--out", str(tmp_path / "none"),
                    "--engine", "ray")
    finally:
        ray.shutdown()
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("error: nothing predicted: none of the 2 input")
    assert len(pd.read_csv(tmp_path / "none" / "skipped.csv")) == 2


def test_without_ray_the_flag_says_how_to_install(exported, cells, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    r = runner.invoke(app, ["predict", str(exported), str(cells), "--out", str(tmp_path / "o"),
                            "--engine", "ray"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == ["error: the ray engine needs Ray: pip install -e .[ray]"]
    assert not (tmp_path / "o").exists()


def test_ray_only_options_are_refused_by_the_local_engine(exported, cells, tmp_path):
    r = runner.invoke(app, ["predict", str(exported), str(cells), "--out", str(tmp_path / "p.csv"),
                            "--num-cpus", "2", "--csv"])
    assert r.exit_code == 1 and "--num-cpus, --csv: not an option of --engine local" in r.output


@pytest.mark.parametrize(("options", "message"), [
    (["--address", "ray://head:10001"], "Ray Data cannot run through Ray Client"),
    (["--address", "auto", "--num-cpus", "2"], "--num-cpus sizes a local Ray instance"),
    (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: cannot connect to a Ray cluster (nothing answers"),
])
def test_cluster_options_that_cannot_work_are_refused(exported, cells, tmp_path, options, message):
    r = runner.invoke(app, ["predict", str(exported), str(cells), "--out", str(tmp_path / "o"),
                            "--engine", "ray", *options])
    assert r.exit_code == 1 and message in r.output


def test_a_command_line_that_is_not_utf8_starts_ray(monkeypatch):
    """Ray records the command line; a folder name in another encoding stopped it (UnicodeEncodeError)."""
    from leukoscope.predict.ray_engine import ray_session

    argv = ["leukoscope", "predict", "bundle", os.fsdecode(b"/data/d\xe9ir"), "--engine", "ray"]
    monkeypatch.setattr(sys, "argv", argv)
    with ray_session(num_cpus=1) as ray:
        assert ray.is_initialized()
    assert sys.argv is argv
