"""Resuming a training run on real ALL-IDB2 cells: bit-identical to an unbroken run, never unpickles
what lies in the run folder, one clear line for a bad checkpoint or seed, and a failed start does
not lock its run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from leukoscope.cli.verbs import app
from leukoscope.data.readers import read
from leukoscope.errors import ConfigError
from leukoscope.progress import Silent
from leukoscope.train import (
    TrainConfig,
    TrainingInterrupted,
    checkpoint,
    cross_validate,
    train,
)

SETTINGS = {"model": "leukonet", "img_size": 32, "batch_size": 4, "epochs": 3, "patience": 5}
ARGS = ["--model", "leukonet", "--img-size", "32", "--batch-size", "4", "--epochs", "3", "--patience", "5"]


@pytest.fixture(scope="module")
def cells(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 blasts and 12 normal cells of ALL-IDB2, copied byte for byte into a folder of their own."""
    files = sorted((data / "allidb2").glob("Im*.tif"))
    folder = tmp_path_factory.mktemp("allidb2") / "allidb2"
    folder.mkdir()
    for f in files[:12] + files[-12:]:
        shutil.copy(f, folder / f.name)
    return folder


class _StopAfterFirstEpoch(Silent):
    """A kill right after epoch 1 was saved (the loop's Ctrl-C path)."""

    def epoch(self, row: dict) -> None:
        raise KeyboardInterrupt


def _stopped_after_one_epoch(cells: Path, out: Path) -> None:
    with pytest.raises(TrainingInterrupted):
        train(read([cells]), TrainConfig.build(**SETTINGS), out, _StopAfterFirstEpoch())


class _Planted:
    """What an attacker pickles: unpickling it creates ``marker`` (it could run anything)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    assert "Traceback" not in output
    return lines[0]


def test_resume_is_bit_identical_to_an_unbroken_run(cells, tmp_path):
    m, cfg = read([cells]), TrainConfig.build(**SETTINGS)
    unbroken = tmp_path / "unbroken"
    train(m, cfg, unbroken)
    resumed = tmp_path / "resumed"
    _stopped_after_one_epoch(cells, resumed)
    train(m, cfg, resumed)
    for name in ("bundle/model.safetensors", "best.safetensors"):
        a, b = load_file(str(unbroken / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ha, hb = (pd.read_csv(run / "history.csv").drop(columns="seconds") for run in (unbroken, resumed))
    assert list(ha["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    # the last epoch's weights (not only the best ones) and every random state after it
    a, b = (checkpoint.load(run / checkpoint.NAME) for run in (unbroken, resumed))
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["rng"][k], b["rng"][k]) for k in ("augment", "torch"))
    assert all(a["rng"][k] == b["rng"][k] for k in ("order", "python"))


@pytest.mark.parametrize("name", [checkpoint.LEGACY, checkpoint.NAME])
def test_a_planted_pickle_checkpoint_is_never_unpickled(cells, tmp_path, name):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    TrainConfig.build(**SETTINGS).resolved().write(out)  # the run folder of this very command
    torch.save({"model": _Planted(marker), "epoch": 1}, out / name)
    torch.load(shutil.copy(out / name, tmp_path / "copy"), weights_only=False)  # what the old loop did
    assert marker.exists()  # the plant works
    marker.unlink()
    res = CliRunner().invoke(app, ["train", str(cells), *ARGS, "--out", str(out)])
    assert res.exit_code == 1
    line = _one_error_line(res.output)
    assert name in line and "delete it" in line
    if name == checkpoint.LEGACY:
        assert "old checkpoint format" in line
    assert not marker.exists()


def test_a_truncated_checkpoint_is_one_line_then_deleting_it_starts_over(cells, tmp_path):
    out = tmp_path / "run"
    _stopped_after_one_epoch(cells, out)
    ckpt = out / checkpoint.NAME
    state, good = checkpoint.load(ckpt), ckpt.read_bytes()
    assert state["epoch"] == 1
    m, cfg = read([cells]), TrainConfig.build(**SETTINGS)
    # well-formed files whose contents fit no run (edited, or planted by hand)
    for edited in ({**state, "model": {"w": torch.zeros(2)}}, {**state, "rng": {}}, {"fingerprint": "x"},
                   {**state, "epoch": "x"}, {**state, "history": "abc"}, {**state, "best_score": "hi"},
                   {**state, "extra": [1]}):
        checkpoint.save(ckpt, edited)
        with pytest.raises(ConfigError, match="not a usable checkpoint"):
            train(m, cfg, out)
    ckpt.write_bytes(good[: len(good) // 2])
    runner = CliRunner()
    command = ["train", str(cells), *ARGS, "--out", str(out)]
    res = runner.invoke(app, command)
    assert res.exit_code == 1
    line = _one_error_line(res.output)
    assert str(ckpt.name) in line and "not a usable checkpoint" in line and "delete it" in line
    with pytest.raises(ConfigError, match="not a usable checkpoint"):
        checkpoint.load(ckpt)
    ckpt.unlink()  # what the line says to do
    res = runner.invoke(app, command)
    assert res.exit_code == 0, res.output
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2, 3]


def test_a_best_weights_file_replaced_by_a_pickle_is_one_line(cells, tmp_path):
    import pickle

    out = tmp_path / "run"
    _stopped_after_one_epoch(cells, out)
    (out / "best.safetensors").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    state = checkpoint.load(out / checkpoint.NAME)
    checkpoint.save(out / checkpoint.NAME, {**state, "stopped": True})  # the next step reads best weights
    with pytest.raises(ConfigError, match="best.safetensors: not a usable checkpoint"):
        train(read([cells]), TrainConfig.build(**SETTINGS), out)


def test_a_checkpoint_from_another_program_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / checkpoint.NAME
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ConfigError, match="not a usable checkpoint.*format"):
        checkpoint.load(path)


def test_seed_out_of_range_is_one_line(cells, tmp_path):
    out = tmp_path / "run"
    for seed in ("-1", str(2**32)):
        res = CliRunner().invoke(app, ["train", str(cells), *ARGS, "--seed", seed, "--out", str(out)])
        assert res.exit_code == 1
        assert "--seed" in _one_error_line(res.output)
    assert not out.exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="--seed"):
        TrainConfig.build(model="leukonet", seed="7").resolved()  # a config file's string


def test_a_failed_start_does_not_lock_its_run_folder(cells, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    bad = runner.invoke(app, ["train", str(cells), *ARGS, "--split-protocol", "official", "--out", str(out)])
    assert bad.exit_code == 1 and "official" in _one_error_line(bad.output)
    assert (out / "config.json").is_file()  # it wrote its settings, but never finished an epoch
    fixed = runner.invoke(app, ["train", str(cells), *ARGS, "--out", str(out)])
    assert fixed.exit_code == 0, fixed.output
    assert (out / "bundle" / "model.safetensors").is_file()
    assert TrainConfig.build(**SETTINGS).resolved().same_as(json.loads((out / "config.json").read_text()))
    # a folder with finished epochs is still protected from other settings
    other = runner.invoke(app, ["train", str(cells), *ARGS, "--lr", "0.5", "--out", str(out)])
    assert other.exit_code == 1 and "other settings" in _one_error_line(other.output)


def test_a_cv_folder_with_finished_folds_stays_protected(cells, tmp_path):
    m = read([cells])
    settings = {**SETTINGS, "epochs": 1, "cv": 2}
    cross_validate(m, TrainConfig.build(**settings), tmp_path)  # progress lives in fold-*/ only
    assert not (tmp_path / checkpoint.NAME).exists()
    with pytest.raises(ConfigError, match="other settings"):
        cross_validate(m, TrainConfig.build(**{**settings, "lr": 0.5}), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_device_cuda_without_a_gpu_is_one_line_before_anything_is_written(cells, tmp_path):
    out = tmp_path / "run"
    for device, word in (("cuda", "sees no CUDA device"), ("tpu", "must be one of")):
        res = CliRunner().invoke(app, ["train", str(cells), *ARGS, "--device", device, "--out", str(out)])
        assert res.exit_code == 1
        line = _one_error_line(res.output)
        assert f"--device {device}" in line or "--device must" in line
        assert word in line
    assert not out.exists()


def test_a_run_records_its_device_and_resumes_under_another_device_setting(cells, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(read([cells]), TrainConfig.build(**SETTINGS, device="cpu"), out, _StopAfterFirstEpoch())
    assert "cuda" not in checkpoint.load(out / checkpoint.NAME)["rng"]  # no GPU state on a CPU run
    res = CliRunner().invoke(app, ["train", str(cells), *ARGS, "--device", "auto", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2, 3]
    expected = "cpu" if not torch.cuda.is_available() else f"cuda ({torch.cuda.get_device_name()})"
    config = json.loads((out / "bundle" / "config.json").read_text())
    assert config["trained_on"] == expected and config["train"]["device"] == "auto"
    assert json.loads((out / "metrics.json").read_text())["timing"]["device"] == expected
    assert f'trained_on: "{expected}"' in (out / "bundle" / "MODEL_CARD.md").read_text()


def test_a_finished_run_is_not_handed_back_for_other_data_or_without_its_record(cells, tmp_path):
    """Rerunning into a finished folder returns its bundle only for the same settings and the same data."""
    from leukoscope.errors import DataError
    from leukoscope.train import rundir

    out = tmp_path / "run"
    first = train(read([cells]), TrainConfig.build(**SETTINGS), out)
    assert train(read([cells]), TrainConfig.build(**SETTINGS), out).path == first.path  # same: handed back
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for f in sorted(cells.iterdir())[2:]:
        shutil.copy(f, fewer / f.name)
    with pytest.raises(ConfigError, match=r"holds a run on other data \(24 images then, 22 now"):
        train(read([fewer]), TrainConfig.build(**SETTINGS), out)
    (out / "config.json").unlink()
    with pytest.raises(ConfigError, match="without a readable record of its settings"):
        train(read([cells]), TrainConfig.build(**SETTINGS), out)
    with rundir.held(tmp_path / "busy"), pytest.raises(DataError, match="another train is writing"):
        train(read([cells]), TrainConfig.build(**SETTINGS), tmp_path / "busy")


def test_ctrl_c_while_a_checkpoint_is_written_says_the_epochs_on_disk(cells, tmp_path, monkeypatch):
    from leukoscope.train import resume

    real, calls = resume.save, []

    def save(*args, **kwargs):  # the third epoch's checkpoint is being written when Ctrl-C comes
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(resume, "save", save)
    with pytest.raises(TrainingInterrupted) as e:
        train(read([cells]), TrainConfig.build(**SETTINGS), tmp_path / "run")
    assert e.value.epoch == 2 == checkpoint.load(tmp_path / "run" / checkpoint.NAME)["epoch"]
