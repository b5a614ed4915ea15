"""Fitting a network on a prepared split: the epoch loop, early stopping, a checkpoint every epoch.

``fit`` writes into the run directory: ``checkpoint.safetensors`` (the last finished epoch, see
``train.resume``), ``best.safetensors`` (the weights of the best epoch so far, by validation
balanced accuracy), and at the end ``history.csv`` and ``curves.png``. Ctrl-C leaves the last
finished epoch on disk and raises ``TrainingInterrupted``. The test side is never looked at here.

The model and each batch live on ``cfg.device`` (augmentation stays on the CPU with the run's own
generator, so a batch is drawn the same wherever it trains); whatever is written to disk is CPU tensors.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from leukoscope.bundle.network import save_weights
from leukoscope.errors import DataError
from leukoscope.models.backbones import channels_last
from leukoscope.models.networks import Network, network_class
from leukoscope.probability import softmax_t
from leukoscope.progress import SILENT
from leukoscope.progress import Progress as Reporting
from leukoscope.settings import threads
from leukoscope.train import augment, checkpoint, resume
from leukoscope.train.config import TrainConfig
from leukoscope.train.data import Prepared
from leukoscope.train.forward import device_of, predict_logits
from leukoscope.train.heldout import scores
from leukoscope.train.resume import Progress
from leukoscope.train.warmstart import warm_start

BEST = "best.safetensors"
#: Images per optimiser step unless the settings say otherwise (``Plan.of`` cuts it on a small set).
DEFAULT_BATCH = 32


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the last finished epoch is saved in the run directory."""

    def __init__(self, out: Path, epoch: int):
        super().__init__(f"interrupted; {epoch} epoch(s) saved in {out}; rerun the same command to resume")
        self.out, self.epoch = out, epoch


@dataclass
class Plan:
    """How the training side is cut: batch size, steps per epoch, epochs and early-stopping patience."""

    batch_size: int
    steps: int
    epochs: int
    patience: int

    @classmethod
    def of(cls, cfg: TrainConfig, n_train: int) -> Plan:
        # tiny sets (C-NMC sample): smaller batches, so an epoch still takes at least 4 steps
        bs = max(2, min(cfg.batch_size or DEFAULT_BATCH, n_train // 4))
        steps = max(1, n_train // bs)
        epochs, patience = cfg.schedule(steps)
        return cls(bs, steps, epochs, patience)


@dataclass
class Trainer:
    """What the epochs update: the model, its optimiser, schedule and loss, the run's own generators
    (augmentation, batch order) and the stages kept frozen."""

    model: Network
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    loss_fn: nn.Module
    gen: torch.Generator
    rng: np.random.Generator
    frozen: list[nn.Module]


def fit(data: Prepared, pre: dict[str, Any], cfg: TrainConfig, out: Path,
        report: Reporting = SILENT, *, say_stretch: bool = True
        ) -> tuple[Network, pd.DataFrame, dict[str, Any]]:
    """Train on ``data`` (sides train / val / test), checkpointing into ``out``; the best model, its
    history and the run's extra figures. A checkpoint of the same run in ``out`` is resumed.
    ``say_stretch`` False keeps the stretched-epochs note back (a CV run says it for its first fold only)."""
    out.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.seed)
    torch.set_num_threads(cfg.threads or threads())  # $OMP_NUM_THREADS, as every other model
    device = cfg.torch_device()
    cls = network_class(cfg.model)
    k = len(data.classes)
    model = channels_last(cls(num_classes=k, pretrained=cls.pretrained)).to(device)
    tr = data.side("train")
    if not len(tr):
        raise DataError("the training side is empty; use more data or a smaller --val / --test")
    plan = Plan.of(cfg, len(tr))
    if say_stretch and (note := cfg.stretch_note(plan.steps)):
        report.note(note)
    asked = cfg.batch_size or DEFAULT_BATCH
    if say_stretch and plan.batch_size != asked:
        report.note(f"batch size {plan.batch_size}, not {asked}: so that the {len(tr)} "
                    "training images give each epoch at least 4 optimiser steps (metrics.json records it)")
    expected = resume.fingerprint(cfg, data.split)
    state = resume.saved_state(out, cfg, expected)
    weights = class_weights(data.y[tr], k)
    loss_weights = weights if cfg.balance == "loss" else np.ones(k)
    progress = Progress()
    if state is None and cls.pretrained and cfg.head_warmup:
        progress.extra["frozen_lr"] = warm_start(model, data, pre, cfg, loss_weights, report)
    t = _trainer(model, cfg, cls.pretrained, plan, loss_weights)
    if state is not None:
        progress = resume.restore(state, out / checkpoint.NAME, t.model, t.opt, t.sched, t.gen, t.rng)
    sample_p = weights[data.y[tr]] / weights[data.y[tr]].sum() if cfg.balance == "sampler" else None
    _epochs(t, data, pre, cfg, plan, progress, expected, sample_p, out, report)
    model, history, extra = _best(t.model, out, progress, plan)
    return model, history, extra | {"device": device_name(device), "batch_size": plan.batch_size}


def device_name(device: torch.device) -> str:
    """What the training record says the run was trained on: ``cpu``, or ``cuda (<card>)``."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(y: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 0.0)


def _trainer(model: Network, cfg: TrainConfig, pretrained: bool, plan: Plan,
             loss_weights: np.ndarray) -> Trainer:
    """Unfreeze what ``cfg`` fine-tunes; AdamW with a warm-up + cosine schedule; weighted, smoothed loss."""
    params = model.trainable(cfg.finetune_depth if pretrained else -1)
    head_ids = {id(p) for p in model.head.parameters()}
    lr = cfg.lr or 1e-3
    # pretrained bodies move slower than the head (Adam's first steps are as large as lr whatever the
    # gradient, enough to scramble ImageNet filters at a head's learning rate)
    body_lr = lr * (1.0 if cfg.body_lr is None else cfg.body_lr)  # 0 is a body that does not learn
    groups = [{"params": [p for p in params if id(p) in head_ids], "lr": lr},
              {"params": [p for p in params if id(p) not in head_ids], "lr": body_lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _schedule(plan.epochs * plan.steps, int(cfg.warmup_epochs * plan.steps)))
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(loss_weights, dtype=torch.float32),
                                  label_smoothing=cfg.label_smoothing).to(device_of(model))
    return Trainer(model, opt, sched, loss_fn, torch.Generator().manual_seed(cfg.seed),
                   np.random.default_rng(cfg.seed), model.frozen_modules())


def _schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _epochs(t: Trainer, data: Prepared, pre: dict[str, Any], cfg: TrainConfig, plan: Plan,
            progress: Progress, expected: dict[str, Any], sample_p: np.ndarray | None, out: Path,
            report: Reporting) -> None:
    """From where ``progress`` stands to the planned last epoch or early stopping, saving after each."""
    epochs_bar = report.task("epochs", plan.epochs)
    epochs_bar(progress.epoch)
    saved = len(progress.history)  # what the checkpoint on disk holds, whenever Ctrl-C comes
    try:
        for epoch in range(progress.epoch, plan.epochs):
            if progress.stopped:
                break
            t0 = time.perf_counter()
            row = _train_epoch(t, data, pre, cfg, plan, sample_p, epoch, report)
            score = _validate(t.model, data, pre, row)
            row["seconds"] = time.perf_counter() - t0
            _record(progress, row, score, plan.patience, t.model, out)
            resume.save(out / checkpoint.NAME, expected, t.model, t.opt, t.sched, progress, t.gen, t.rng)
            saved = len(progress.history)
            report.epoch(row)
            epochs_bar(1)
    except KeyboardInterrupt:
        raise TrainingInterrupted(out, saved) from None
    report.done("epochs")


def _train_epoch(t: Trainer, data: Prepared, pre: dict[str, Any], cfg: TrainConfig, plan: Plan,
                 sample_p: np.ndarray | None, epoch: int, report: Reporting) -> dict[str, Any]:
    """One pass over the training side (augmented; shuffled, or drawn class-balanced): its figures."""
    tr = data.side("train")
    device = device_of(t.model)
    t.model.train()
    for f in t.frozen:
        f.eval()
    if cfg.freeze_bn:
        for mod in t.model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()
    order = t.rng.choice(tr, size=len(tr), p=sample_p) if sample_p is not None else t.rng.permutation(tr)
    strength = cfg.aug_strength if cfg.augment else 0.0
    total, correct, seen = 0.0, 0, 0
    what = f"epoch {epoch + 1}/{plan.epochs}"
    advance = report.task(what, plan.steps)
    for b in range(plan.steps):
        idx = np.sort(order[b * plan.batch_size:(b + 1) * plan.batch_size])
        if len(idx) < 2 and len(tr) >= 2:  # BatchNorm needs two samples
            continue
        x = augment.augment(torch.from_numpy(data.images[idx]), strength, t.gen, cfg.stain_jitter)
        x = augment.normalize(x, pre["mean"], pre["std"]).to(device, non_blocking=True)
        target = torch.from_numpy(data.y[idx]).to(device, non_blocking=True)
        logits = t.model(x)
        loss = t.loss_fn(logits, target)
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.opt.step()
        t.sched.step()
        total += loss.item() * len(idx)
        correct += int((logits.argmax(1) == target).sum())
        seen += len(idx)
        advance(1)
    report.done(what)
    return {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "lr": t.opt.param_groups[0]["lr"]}


def _validate(model: Network, data: Prepared, pre: dict[str, Any], row: dict[str, Any]) -> float:
    """Add the validation figures to the epoch's ``row``; the score early stopping keeps the best of."""
    va = data.side("val")
    if not len(va):  # lower training loss is better, as a score in (0, 1]: above a new run's best of -1
        row |= {"val_loss": math.nan, "val_accuracy": math.nan, "val_balanced_accuracy": math.nan}
        return 1.0 / (1.0 + row["train_loss"])
    lv = predict_logits(model, data.images[va], pre)
    s = scores(data.y[va], softmax_t(lv), data.classes)
    loss = nn.functional.cross_entropy(torch.from_numpy(lv), torch.from_numpy(data.y[va]))
    row |= {"val_loss": float(loss), "val_accuracy": s["accuracy"],
            "val_balanced_accuracy": s["balanced_accuracy"]}
    return s["balanced_accuracy"] - 1e-3 * row["val_loss"]  # ties -> lower loss


def _record(progress: Progress, row: dict[str, Any], score: float, patience: int, model: Network,
            out: Path) -> None:
    """Early stopping's book-keeping; the weights of a new best epoch go to ``best.safetensors``."""
    progress.history.append(row)
    progress.epoch = row["epoch"]
    if score > progress.best_score:
        progress.best_score, progress.best_epoch, progress.bad_epochs = score, row["epoch"], 0
        save_weights(model, out)
        os.replace(out / "model.safetensors", out / BEST)
    else:
        progress.bad_epochs += 1
    progress.stopped = progress.bad_epochs >= patience


def _best(model: Network, out: Path, progress: Progress, plan: Plan
          ) -> tuple[Network, pd.DataFrame, dict[str, Any]]:
    """The best epoch's weights back in ``model``; history.csv and curves.png written."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(out / BEST)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise checkpoint.unreadable(out / BEST, e) from None
    model.eval()
    history = pd.DataFrame(progress.history)
    _plot_history(history, out / "curves.png")
    history.to_csv(out / "history.csv", index=False)
    extra = {**progress.extra, "best_epoch": progress.best_epoch, "epochs_run": len(progress.history),
             "epochs_planned": plan.epochs}
    return model, history, extra


def _plot_history(history: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leukoscope.evaluate.figures import plot_series
    from leukoscope.reports.html import save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    x = list(history["epoch"])
    plot_series(a, x, {"train": history["train_loss"], "validation": history["val_loss"]})
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    plot_series(b, x, {"train accuracy": history["train_accuracy"],
                       "validation accuracy": history["val_accuracy"],
                       "validation balanced acc.": history["val_balanced_accuracy"]})
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    save_figure(fig, path)
