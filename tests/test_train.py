"""Training on tiny synthetic cells: the loss falls, runs resume, bundles round-trip, CV and CLI work."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leukoscope.bundle import load_bundle
from leukoscope.cli.verbs import app
from leukoscope.data.images import load_rgb
from leukoscope.data.manifest import label_indices
from leukoscope.data.readers import read
from leukoscope.errors import ConfigError
from leukoscope.models.networks import LeukoNet
from leukoscope.progress import Silent
from leukoscope.train import (
    TrainConfig,
    TrainingInterrupted,
    checkpoint,
    cross_validate,
    train,
)

TINY = {"model": "leukonet", "img_size": 32, "batch_size": 8, "epochs": 2, "patience": 5}


def test_a_few_steps_lower_the_loss(synthetic2):
    torch.manual_seed(0)
    m = read([synthetic2]).iloc[:16]
    x = torch.from_numpy(np.stack([load_rgb(p)[::4, ::4] for p in m["path"]])).permute(0, 3, 1, 2)
    x = (x.float() / 255 - 0.5).contiguous(memory_format=torch.channels_last)
    y = torch.tensor(label_indices(m, sorted(set(m["label"]))))
    net = LeukoNet(num_classes=2)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


class _StopAfterFirstEpoch(Silent):
    def epoch(self, row):
        raise KeyboardInterrupt


def test_interrupt_then_resume_and_bundle_round_trip(synthetic2, tmp_path):
    m = read([synthetic2])
    cfg = TrainConfig.build(**TINY)
    with pytest.raises(TrainingInterrupted):
        train(m, cfg, tmp_path, _StopAfterFirstEpoch())
    saved = checkpoint.load(tmp_path / checkpoint.NAME)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    bundle = train(m, cfg, tmp_path)  # same command: resumes at epoch 2
    history = bundle.history()
    assert list(history["epoch"]) == [1, 2]
    assert history["train_loss"].iloc[0] == pytest.approx(saved["history"][0]["train_loss"])
    for name in ("config.yaml", "config.json", "history.csv", "curves.png", "metrics.json"):
        assert (tmp_path / name).is_file()
    # round trip: the reloaded bundle reproduces the in-training test figures
    again = load_bundle(tmp_path / "bundle")
    split = again.split()
    test = split[split["side"] == "test"]
    probs = again.predict_proba([load_rgb(p) for p in test["path"]])
    y = np.asarray(label_indices(test, again.classes))
    metrics = again.metrics()["test"]
    assert (probs.argmax(1) == y).mean() == pytest.approx(metrics["accuracy"])
    assert np.allclose(probs, bundle.predict_proba([load_rgb(p) for p in test["path"]]))
    assert again.config["preprocessing"]["input_size"] == 32 and again.family == "network"
    # a different setting in the same run directory is refused, not mixed
    with pytest.raises(ConfigError):
        train(m, TrainConfig.build(**{**TINY, "lr": 0.5}), tmp_path)


def test_lite0_fine_tune_with_frozen_baseline(synthetic2, tmp_path):
    m = read([synthetic2])
    cfg = TrainConfig.build(model="efficientnet_lite0", img_size=32, batch_size=16, epochs=1,
                            finetune_depth=2, freeze_bn=True)
    bundle = train(m, cfg, tmp_path)
    metrics = bundle.metrics()
    assert {"validation", "test", "frozen_lr"} <= set(metrics)
    assert metrics["test"]["n"] > 0 and metrics["best_epoch"] == 1
    assert set(metrics["frozen_lr"]) == {"val", "test"}


def test_cross_validation(synthetic2, tmp_path):
    m = read([synthetic2])
    result = cross_validate(m, TrainConfig.build(**{**TINY, "epochs": 1, "cv": 2, "img_size": 24}), tmp_path)
    assert result["k"] == 2 and len(result["folds"]) == 2
    assert sum(f["test_images"] for f in result["folds"]) == len(m)
    lo, hi = result["f1_weighted_ci95"]
    assert 0 <= lo <= hi <= 1
    for key in ("accuracy", "roc_auc"):  # every pooled headline figure has its interval
        lo, hi = result[f"{key}_ci95"]
        assert 0 <= lo <= result["pooled"][key] <= hi <= 1
    assert json.loads((tmp_path / "cv.json").read_text())["k"] == 2


def test_cli_train_and_config_replay(synthetic2, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", str(synthetic2), "--model", "leukonet", "--epochs", "1", "--img-size", "32",
            "--batch-size", "8", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "bundle" / "model.safetensors").is_file() and "test" in res.output
    replay = runner.invoke(app, ["train", str(synthetic2), "--config", str(out / "config.yaml"),
                                 "--out", str(out)])
    assert replay.exit_code == 0, replay.output
    bad = runner.invoke(app, ["train", str(synthetic2), "--stain", "purple", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--stain" in bad.output


def test_small_data_sets_get_more_epochs_unless_epochs_are_given() -> None:
    lite = TrainConfig.build(model="efficientnet_lite0").resolved()
    assert (lite.epochs, lite.patience, lite.min_steps) == (6, 4, 400)
    assert lite.schedule(286) == (6, 4)  # the full C-NMC training set: 9,144 images, 286 steps an epoch
    assert lite.schedule(26) == (16, 11)  # aria_all: 832 images -> 400 steps, patience in proportion
    explicit = TrainConfig.build(model="efficientnet_lite0", epochs=3).resolved()
    assert explicit.min_steps == 0 and explicit.schedule(5) == (3, 4)
    replay = TrainConfig.build(**lite.as_dict()).resolved()  # a run's config.yaml replays the same
    assert replay.schedule(26) == (16, 11)
    with pytest.raises(ConfigError, match="min_steps"):
        TrainConfig.build(model="leukonet", min_steps=-1).resolved()


def test_training_uses_the_threads_omp_num_threads_allows(synthetic2, tmp_path, monkeypatch):
    """Like every other model (``settings.threads``), training takes $OMP_NUM_THREADS (Ray actors and
    shared machines set it) instead of every core."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        torch.set_num_threads(2)
        train(read([synthetic2]), TrainConfig.build(**{**TINY, "epochs": 1}), tmp_path)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("setting", "value", "said"), [
    ("label_smoothing", 5.0, "label_smoothing must be in [0, 1)"),
    ("weight_decay", -1.0, "weight_decay must be >= 0"),
    ("warmup_epochs", -3.0, "warmup_epochs must be >= 0"),
    ("threads", -4, "threads must be >= 0"),
    ("body_lr", -1.0, "body_lr must be >= 0"),
    ("finetune_depth", -2, "finetune_depth must be >= -1"),
])
def test_settings_a_config_file_gives_are_checked_before_any_work(setting, value, said):
    with pytest.raises(ConfigError, match=re.escape(said)):
        TrainConfig.build(model="leukonet", **{setting: value}).resolved()  # as train opens its run


def test_a_body_lr_of_zero_is_a_body_that_does_not_learn():
    from leukoscope.models.networks import network_class
    from leukoscope.train.fit import Plan, _trainer

    cfg = TrainConfig.build(model="leukonet", body_lr=0.0).resolved()
    model = network_class("leukonet")(num_classes=2, pretrained=False)
    t = _trainer(model, cfg, True, Plan.of(cfg, 100), np.ones(2))
    assert [g["initial_lr"] for g in t.opt.param_groups] == [cfg.lr, 0.0]  # it was 1.0 x lr


def test_a_batch_size_cut_for_a_small_set_is_said_and_recorded(synthetic2, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(synthetic2), "--model", "leukonet", "--epochs", "1",
                                   "--img-size", "32", "--batch-size", "1000", "--out", str(out)])
    assert res.exit_code == 0, res.output
    used = json.loads((out / "metrics.json").read_text())["batch_size"]
    assert used < 1000 and f"batch size {used}, not 1000" in " ".join(res.output.split())
