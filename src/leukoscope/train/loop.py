"""Train a network on a manifest: grouped split, cached pixels, fine-tuning, early stopping, resume.

``train(m, config, out)`` writes into the run directory ``out``::

    config.json / config.yaml   the resolved TrainConfig (``--config out/config.yaml`` replays it)
    checkpoint.safetensors      last finished epoch (model, optimiser, schedule, every RNG, history;
                                no pickle: see ``train.checkpoint``)
    best.safetensors            weights of the best epoch so far (validation balanced accuracy)
    history.csv, curves.png     per-epoch loss / accuracy
    metrics.json                validation and test figures (and frozen features + LR)
    bundle/                     the model bundle (``load_bundle(out / "bundle")``)

Rerunning with the same settings resumes from the checkpoint, bit for bit as if never stopped;
Ctrl-C leaves the last finished epoch on disk and raises ``TrainingInterrupted``. The test side is
never seen before the end: early stopping and temperature scaling use the validation side only.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from leukoscope.bundle import finish_bundle, load_bundle, write_json, writing_bundle
from leukoscope.bundle.network import save_weights
from leukoscope.data.images import load_rgb
from leukoscope.data.manifest import Manifest, classes, label_indices, labelled
from leukoscope.data.splits import (
    Split,
    check_no_leak,
    kfold,
    official_cnmc,
    split_protocol,
    train_val_test,
)
from leukoscope.errors import ConfigError, DataError, ImageError
from leukoscope.evaluate.calibration import fit_temperature
from leukoscope.evaluate.metrics import classification_metrics
from leukoscope.models import preprocess, stain
from leukoscope.models.backbones import channels_last
from leukoscope.models.networks import Network, forward_logits, network_class
from leukoscope.probability import softmax_t
from leukoscope.train import augment, checkpoint
from leukoscope.train.config import TrainConfig

BEST = "best.safetensors"
BUNDLE = "bundle"
EVAL_BATCH = 64
#: What restoring a checkpoint that parses but does not fit this run raises (a foreign or edited file).
BAD_STATE = (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the last finished epoch is saved in the run directory."""

    def __init__(self, out: Path, epoch: int):
        super().__init__(f"interrupted; {epoch} epoch(s) saved in {out}; rerun the same command to resume")
        self.out, self.epoch = out, epoch


class Reporter(Protocol):
    """What the loop tells its caller (the CLI shows Rich progress bars; the library prints nothing)."""

    def task(self, description: str, total: int) -> Callable[[int], None]: ...

    def done(self, description: str) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...


class SilentReporter:
    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n: None

    def done(self, description: str) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        pass


# ---------------------------------------------------------------- data


def subset(m: Manifest, fraction: float, seed: int) -> Manifest:
    """About ``fraction`` of the groups of each class (whole groups, so splits stay grouped)."""
    if fraction >= 1:
        return m
    rng = np.random.default_rng(seed)
    keep: set[str] = set()
    for _, part in m.groupby("label"):
        groups = sorted(part["group"].unique())
        n = max(2, math.ceil(fraction * len(groups)))
        keep.update(rng.choice(groups, size=min(n, len(groups)), replace=False))
    return m[m["group"].isin(keep)].reset_index(drop=True)


def make_split(m: Manifest, cfg: TrainConfig) -> Split:
    if cfg.split_protocol == "official":
        return official_cnmc(m, val=cfg.val, seed=cfg.seed)
    return train_val_test(m, val=cfg.val, test=cfg.test, seed=cfg.seed)


def decode(paths: Sequence[str], pre: dict[str, Any], reporter: Reporter
           ) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Each image decoded once, cropped and resized: N x S x S x 3 uint8 (skipped files listed)."""
    size = pre["input_size"]
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    skipped: list[tuple[str, str]] = []
    geometry = {**pre, "stain": {"method": "none"}, "grayscale": False}
    advance = reporter.task("decoding images", len(paths))

    def one(i: int) -> None:
        try:
            out[i] = preprocess.to_uint8([load_rgb(paths[i])], geometry)[0]
        except ImageError as e:
            skipped.append((paths[i], str(e)))
        advance(1)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, range(len(paths))))
    reporter.done("decoding images")
    return out, skipped


@dataclass
class Prepared:
    """A split with its pixels: ``images[i]`` belongs to ``split.iloc[i]``."""

    split: Split
    images: np.ndarray
    y: np.ndarray
    classes: list[str]

    def side(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split["side"].to_numpy() == name)


def prepare_split(split: Split, images: np.ndarray, pre: dict[str, Any], cfg: TrainConfig,
                  class_names: list[str]) -> tuple[Prepared, dict[str, Any]]:
    """Fit the stain target on the training side, apply stain + grayscale: the final uint8 cache."""
    train_idx = np.flatnonzero(split["side"].to_numpy() == "train")
    target = stain.fit([images[i] for i in train_idx[:64]], cfg.stain)
    pre = {**pre, "stain": target}
    if target["method"] != "none" or pre["grayscale"]:
        images = preprocess.to_uint8(list(images), {**pre, "crop_to_cell": False})
    y = np.asarray(label_indices(split, class_names), np.int64)
    return Prepared(split.reset_index(drop=True), images, y, class_names), pre


# ---------------------------------------------------------------- model helpers


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _inputs(images: np.ndarray, pre: dict[str, Any]) -> torch.Tensor:
    return augment.normalize(augment.to_float(torch.from_numpy(images)), pre["mean"], pre["std"])


def predict_logits(module: nn.Module, images: np.ndarray, pre: dict[str, Any], tta: bool = False,
                   advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Eval-mode logits of cached uint8 images (no augmentation; D4 average when ``tta``)."""
    module.eval()
    out = []
    with torch.inference_mode():
        for s in _batches(len(images), EVAL_BATCH):
            out.append(forward_logits(module, _inputs(images[s], pre), tta).float().numpy())
            if advance:
                advance(s.stop - s.start)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embeddings(module: Network, images: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    module.eval()
    with torch.inference_mode():
        return np.concatenate([module.embed(_inputs(images[s], pre)).float().numpy()
                               for s in _batches(len(images), EVAL_BATCH)])


def frozen_linear(emb: np.ndarray, data: Prepared, seed: int) -> dict[str, Any]:
    """Logistic regression on frozen embeddings, scored on val / test: the baseline to beat."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr = data.side("train")
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500, class_weight="balanced",
                                                            random_state=seed))
    lr.fit(emb[tr], data.y[tr])
    figures = {}
    for side in ("val", "test"):
        idx = data.side(side)
        if len(idx):
            figures[side] = _scores(data.y[idx], lr.predict_proba(emb[idx]), data.classes)
    return figures


def warm_head(model: Network, emb: np.ndarray, y: np.ndarray, weights: np.ndarray,
              cfg: TrainConfig, steps: int = 300) -> None:
    """Train only the linear head on frozen embeddings (full batch, seconds), so fine-tuning
    starts from a sensible head instead of a random one that would scramble the body."""
    x, t = torch.from_numpy(emb), torch.from_numpy(y)
    head = model.head
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32),
                                  label_smoothing=cfg.label_smoothing)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(head(x), t).backward()
        opt.step()


def _scores(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    full = classification_metrics(y, probs, class_names)
    return {k: full[k] for k in ("n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted",
                                 "roc_auc", "ece")}


def class_weights(y: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 0.0)


def _schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _plot_history(history: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leukoscope.reports.html import save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(history["epoch"], history["train_loss"], "o-", label="train")
    a.plot(history["epoch"], history["val_loss"], "o-", label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(history["epoch"], history["train_accuracy"], "o-", label="train accuracy")
    b.plot(history["epoch"], history["val_accuracy"], "o-", label="validation accuracy")
    b.plot(history["epoch"], history["val_balanced_accuracy"], "s--", label="validation balanced acc.")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


# ---------------------------------------------------------------- the fit


def _fingerprint(cfg: TrainConfig, data: Prepared) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings and the exact split."""
    import hashlib

    blob = "\n".join(f"{p},{s}" for p, s in zip(data.split["path"], data.split["side"], strict=True))
    return {"config": cfg.as_dict(), "split": hashlib.sha1(blob.encode()).hexdigest()}


def fit(data: Prepared, pre: dict[str, Any], cfg: TrainConfig, out: Path,
        reporter: Reporter | None = None) -> tuple[Network, pd.DataFrame, dict[str, Any]]:
    """Train on ``data`` (sides train / val / test), checkpointing into ``out``; the best model."""
    from safetensors.torch import load_file

    rep = reporter or SilentReporter()
    out.mkdir(parents=True, exist_ok=True)
    _seed_all(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    cls = network_class(cfg.model)
    k = len(data.classes)
    model = channels_last(cls(num_classes=k, pretrained=cls.pretrained))
    tr, va = data.side("train"), data.side("val")
    if not len(tr):
        raise DataError("the training side is empty; use more data or a smaller --val / --test")
    # tiny sets (C-NMC sample): smaller batches, so an epoch still takes at least 4 steps
    bs = max(2, min(cfg.batch_size or 32, len(tr) // 4))
    steps_per_epoch = max(1, len(tr) // bs)
    epochs, patience = cfg.schedule(steps_per_epoch)
    fingerprint = _fingerprint(cfg, data)
    extra: dict[str, Any] = {}

    ckpt_path = out / checkpoint.NAME
    found = checkpoint.find(out)
    state = checkpoint.load(found) if found else None
    if state is not None:
        try:
            old = state["fingerprint"]
            same = old["split"] == fingerprint["split"] and cfg.same_as(old["config"])
        except BAD_STATE as e:
            raise checkpoint.unreadable(ckpt_path, e) from None
        if not same:
            raise ConfigError(f"{out} holds a run with other settings or another split; "
                              "use another --out, or delete it to start over")
    weights = class_weights(data.y[tr], k)
    if state is None and cls.pretrained and cfg.head_warmup:
        advance = rep.task("frozen features: logistic regression, head warm-up", 1)
        emb = embeddings(model, data.images, pre)
        extra["frozen_lr"] = frozen_linear(emb, data, cfg.seed)
        warm_head(model, emb[tr], data.y[tr], weights if cfg.balance == "loss" else np.ones(k), cfg)
        advance(1)
        rep.done("frozen features: logistic regression, head warm-up")

    params = model.trainable(cfg.finetune_depth if cls.pretrained else -1)
    head_ids = {id(p) for p in model.head.parameters()}
    lr = cfg.lr or 1e-3
    # pretrained bodies move slower than the head (Adam's first steps are as large as lr whatever the
    # gradient, enough to scramble ImageNet filters at a head's learning rate)
    groups = [{"params": [p for p in params if id(p) in head_ids], "lr": lr},
              {"params": [p for p in params if id(p) not in head_ids], "lr": lr * (cfg.body_lr or 1.0)}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _schedule(epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)))
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights if cfg.balance == "loss" else np.ones(k),
                                                      dtype=torch.float32),
                                  label_smoothing=cfg.label_smoothing)
    history: list[dict[str, Any]] = []
    start, best_score, best_epoch, bad = 0, -1.0, -1, 0
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    stopped = False
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            _match_layout(opt)
            sched.load_state_dict(state["scheduler"])
            history, start = state["history"], state["epoch"]
            best_score, best_epoch, bad = state["best_score"], state["best_epoch"], state["bad_epochs"]
            extra = state["extra"]
            _set_rng_states(state["rng"], gen, rng)
            stopped = bool(state["stopped"])
        except BAD_STATE as e:
            raise checkpoint.unreadable(ckpt_path, e) from None

    sample_p = weights[data.y[tr]] / weights[data.y[tr]].sum() if cfg.balance == "sampler" else None
    strength = cfg.aug_strength if cfg.augment else 0.0
    frozen = model.frozen_modules()
    epochs_bar = rep.task("epochs", epochs)
    epochs_bar(start)
    epoch = start
    try:
        for epoch in range(start, epochs):
            if stopped:
                break
            t0 = time.perf_counter()
            model.train()
            for f in frozen:
                f.eval()
            if cfg.freeze_bn:
                for mod in model.modules():
                    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                        mod.eval()
            order = (rng.choice(tr, size=len(tr), p=sample_p) if sample_p is not None
                     else rng.permutation(tr))
            total, correct, seen = 0.0, 0, 0
            advance = rep.task(f"epoch {epoch + 1}/{epochs}", steps_per_epoch)
            for b in range(steps_per_epoch):
                idx = np.sort(order[b * bs:(b + 1) * bs])
                if len(idx) < 2 and len(tr) >= 2:  # BatchNorm needs two samples
                    continue
                x = augment.augment(torch.from_numpy(data.images[idx]), strength, gen)
                x = augment.normalize(x, pre["mean"], pre["std"])
                target = torch.from_numpy(data.y[idx])
                logits = model(x)
                loss = loss_fn(logits, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                correct += int((logits.argmax(1) == target).sum())
                seen += len(idx)
                advance(1)
            rep.done(f"epoch {epoch + 1}/{epochs}")
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(seen, 1),
                                   "train_accuracy": correct / max(seen, 1),
                                   "lr": opt.param_groups[0]["lr"]}
            if len(va):
                lv = predict_logits(model, data.images[va], pre)
                probs = softmax_t(lv)
                s = _scores(data.y[va], probs, data.classes)
                row |= {"val_loss": float(nn.functional.cross_entropy(torch.from_numpy(lv),
                                                                      torch.from_numpy(data.y[va]))),
                        "val_accuracy": s["accuracy"], "val_balanced_accuracy": s["balanced_accuracy"]}
                score = s["balanced_accuracy"] - 1e-3 * row["val_loss"]  # ties -> lower loss
            else:
                row |= {"val_loss": math.nan, "val_accuracy": math.nan, "val_balanced_accuracy": math.nan}
                score = -row["train_loss"]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if score > best_score:
                best_score, best_epoch, bad = score, epoch + 1, 0
                save_weights(model, out)
                os.replace(out / "model.safetensors", out / BEST)
            else:
                bad += 1
            stopped = bad >= patience
            checkpoint.save(ckpt_path, {
                "fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "history": history, "epoch": epoch + 1,
                "best_score": best_score, "best_epoch": best_epoch, "bad_epochs": bad, "extra": extra,
                "rng": _rng_states(gen, rng), "stopped": stopped})
            rep.epoch(row)
            epochs_bar(1)
    except KeyboardInterrupt:
        raise TrainingInterrupted(out, len(history)) from None
    rep.done("epochs")
    model.load_state_dict(load_file(str(out / BEST)))
    model.eval()
    hist = pd.DataFrame(history)
    _plot_history(hist, out / "curves.png")
    hist.to_csv(out / "history.csv", index=False)
    extra["best_epoch"] = best_epoch
    extra["epochs_run"] = len(history)
    extra["epochs_planned"] = epochs
    return model, hist, extra


def _rng_states(gen: torch.Generator, rng: np.random.Generator) -> dict[str, Any]:
    """Every random state an epoch draws from: augmentation and batch order (the run's own
    generators), dropout (torch's global one), and numpy's and Python's global ones for the rest."""
    return {"augment": gen.get_state(), "order": rng.bit_generator.state, "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(legacy=False), "python": random.getstate()}


def _set_rng_states(saved: dict[str, Any], gen: torch.Generator, rng: np.random.Generator) -> None:
    gen.set_state(saved["augment"])
    rng.bit_generator.state = saved["order"]
    torch.set_rng_state(saved["torch"])
    np.random.set_state(saved["numpy"])
    random.setstate(saved["python"])


def _match_layout(opt: torch.optim.Optimizer) -> None:
    """Optimiser moments back in their parameter's memory layout (channels_last), as the unbroken run
    keeps them: the checkpoint stores them contiguous, and an elementwise kernel over mixed layouts
    may take another code path (not seen to change a bit on this project's CPUs; kept to be exact)."""
    for p, st in opt.state.items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                st[key] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def evaluate(model: Network, data: Prepared, pre: dict[str, Any], tta: bool,
             reporter: Reporter | None = None) -> tuple[dict[str, Any], float, dict[str, np.ndarray]]:
    """Figures on val and test (temperature fitted on val only) and the test-side probabilities."""
    rep = reporter or SilentReporter()
    logits: dict[str, np.ndarray] = {}
    for side in ("val", "test"):
        idx = data.side(side)
        if len(idx):
            advance = rep.task(f"evaluating {side}" + (" (TTA x8)" if tta else ""), len(idx))
            logits[side] = predict_logits(model, data.images[idx], pre, tta, advance)
            rep.done(f"evaluating {side}" + (" (TTA x8)" if tta else ""))
    va = data.side("val")
    temperature = fit_temperature(logits["val"], data.y[va]) if "val" in logits else 1.0
    metrics: dict[str, Any] = {}
    probs_out = {}
    for side, name in (("val", "validation"), ("test", "test")):
        if side not in logits:
            continue
        y = data.y[data.side(side)]
        before = softmax_t(logits[side])
        after = softmax_t(logits[side], temperature)
        metrics[name] = {**_scores(y, after, data.classes),
                         "ece_before": _scores(y, before, data.classes)["ece"]}
        metrics[name]["ece_after"] = metrics[name].pop("ece")
        probs_out[side] = after
    return metrics, temperature, probs_out


def fit_and_bundle(data: Prepared, pre: dict[str, Any], cfg: TrainConfig, out: Path,
                   reporter: Reporter | None = None, data_desc: str = ""
                   ) -> tuple[Any, dict[str, np.ndarray]]:
    """``fit``, evaluate, write metrics.json and ``out/bundle``; the loaded bundle and test probs."""
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    model, history, extra = fit(data, pre, cfg, out, reporter)
    metrics, temperature, probs = evaluate(model, data, pre, cfg.tta, reporter)
    metrics |= {"protocol": split_protocol(data.split), "tta": cfg.tta,
                "best_epoch": extra["best_epoch"], "epochs_run": extra["epochs_run"],
                "epochs_planned": extra["epochs_planned"],
                # this session only (a resumed run counts from the resume); the load average says
                # whether other work shared the machine
                "timing": {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                           "load_average": (load0 + os.getloadavg()[0]) / 2, "cores": os.cpu_count()}}
    if "frozen_lr" in extra:
        metrics["frozen_lr"] = extra["frozen_lr"]
    config = {"family": "network", "model": cfg.model, "classes": data.classes,
              "input_size": pre["input_size"], "preprocessing": pre, "temperature": temperature,
              "tta": cfg.tta, "protocol": metrics["protocol"], "data": data_desc,
              "train": cfg.as_dict()}
    write_json(out / "metrics.json", metrics)
    split = data.split.drop(columns=[c for c in ("layout",) if c in data.split])
    with writing_bundle(out / BUNDLE) as folder:
        save_weights(model, folder)
        finish_bundle(folder, config, metrics, split, history)
    _mark_done(out)
    return load_bundle(out / BUNDLE), probs


def _mark_done(out: Path) -> None:
    (out / ".done").write_text("ok\n")


def _prepare_run(m: Manifest, cfg: TrainConfig, reporter: Reporter
                 ) -> tuple[Manifest, np.ndarray, dict[str, Any], list[str], list[tuple[str, str]]]:
    m = subset(labelled(m), cfg.subset, cfg.seed)
    cls = network_class(cfg.model)
    pre = preprocess.preprocessing_config(cfg.img_size or 224, cls.mean, cls.std, cfg.grayscale,
                                          cfg.crop_to_cell)
    images, skipped = decode(list(m["path"]), pre, reporter)
    if skipped:
        bad = {p for p, _ in skipped}
        keep = ~m["path"].isin(bad).to_numpy()
        m, images = m[keep].reset_index(drop=True), images[keep]
    return m, images, pre, classes(m), skipped


def _describe(m: Manifest) -> str:
    return ", ".join(sorted(set(m.get("dataset", pd.Series(["input"])).astype(str))))


def train(m: Manifest, config: TrainConfig, out: Path, reporter: Reporter | None = None) -> Any:
    """Train ``config.model`` on ``m`` with a grouped train / val / test split; the bundle in ``out``.

    A finished run directory is not retrained: rerunning returns its bundle.
    """
    out = Path(out)
    cfg = config.resolved()
    if (out / ".done").exists() and (out / BUNDLE).is_dir():
        _check_same(out, cfg)
        return load_bundle(out / BUNDLE)
    rep = reporter or SilentReporter()
    out.mkdir(parents=True, exist_ok=True)
    _check_same(out, cfg)
    checkpoint.find(out)  # an old pickle checkpoint is refused now, not after decoding every image
    cfg.write(out)
    m, images, pre, class_names, skipped = _prepare_run(m, cfg, rep)
    split = make_split(m, cfg)
    order = split.set_index("path").loc[m["path"], "side"].to_numpy()
    split = m.assign(side=order)
    check_no_leak(split)
    data, pre = prepare_split(split, images, pre, cfg, class_names)
    bundle, _ = fit_and_bundle(data, pre, cfg, out, rep, _describe(m))
    if skipped:
        write_json(out / "skipped.json", [{"path": p, "reason": r} for p, r in skipped])
    return bundle


def _check_same(out: Path, cfg: TrainConfig) -> None:
    """Refuse to mix two different runs in one directory. A directory with no finished epoch (a start
    that failed before its first checkpoint, leaving only its config) holds nothing to protect: the
    corrected command takes it over."""
    import json

    f = out / "config.json"
    if f.exists() and not cfg.same_as(json.loads(f.read_text())) and _has_progress(out):
        raise ConfigError(f"{out} holds a run with other settings (see {f}); "
                          "use another --out, or delete it to start over")


def _has_progress(out: Path) -> bool:
    """Whether ``out`` (or one of its CV folds) holds a finished epoch or a finished run."""
    return any((run / name).exists() for run in (out, *out.glob("fold-*"))
               for name in (checkpoint.NAME, checkpoint.LEGACY, ".done"))


def cross_validate(m: Manifest, config: TrainConfig, out: Path, reporter: Reporter | None = None
                   ) -> dict[str, Any]:
    """Subject-grouped K-fold: each fold is the test side once (val carved from the rest).

    Returns per-fold and pooled figures (weighted F1 is the C-NMC challenge metric) for the
    fine-tuned network and, for pretrained models, frozen features + logistic regression.
    Written to ``out/cv.json``; fold runs live in ``out/fold-<i>`` and resume like any run.
    """
    out = Path(out)
    cfg = config.resolved()
    rep = reporter or SilentReporter()
    out.mkdir(parents=True, exist_ok=True)
    _check_same(out, cfg)
    cfg.write(out)
    m, images, pre0, class_names, _ = _prepare_run(m, cfg, rep)
    folds = kfold(m, cfg.cv, cfg.seed)
    per_fold, pooled_y, pooled_p = [], [], []
    for f in sorted(folds["fold"].unique()):
        test_mask = (folds["fold"] == f).to_numpy()
        rest = folds[~test_mask].drop(columns="fold")
        inner = train_val_test(rest, val=cfg.val, test=0.0, seed=cfg.seed)
        side = pd.Series("test", index=folds.index)
        side.loc[np.flatnonzero(~test_mask)] = inner["side"].to_numpy()
        split = folds.drop(columns="fold").assign(side=side.to_numpy())
        check_no_leak(split)
        data, pre = prepare_split(split, images, pre0, cfg, class_names)
        fold_cfg = TrainConfig(**{**cfg.as_dict(), "cv": 0})
        bundle, probs = fit_and_bundle(data, pre, fold_cfg, out / f"fold-{f}", rep, _describe(m))
        mets = bundle.metrics()
        y_test = data.y[data.side("test")]
        pooled_y.append(y_test)
        pooled_p.append(probs["test"])
        row = {"fold": int(f), "test_images": int(len(y_test)),
               "test_groups": int(split.loc[split["side"] == "test", "group"].nunique()),
               "f1_weighted": mets["test"]["f1_weighted"], "accuracy": mets["test"]["accuracy"],
               "balanced_accuracy": mets["test"]["balanced_accuracy"]}
        if "frozen_lr" in mets and "test" in mets["frozen_lr"]:
            row["frozen_lr_f1_weighted"] = mets["frozen_lr"]["test"]["f1_weighted"]
        per_fold.append(row)
    y_all, p_all = np.concatenate(pooled_y), np.concatenate(pooled_p)
    pooled = _scores(y_all, p_all, class_names)
    table = pd.DataFrame(per_fold)
    result: dict[str, Any] = {
        "protocol": split_protocol(folds), "k": int(folds["fold"].nunique()), "folds": per_fold,
        "pooled": pooled,
        "f1_weighted_mean": float(table["f1_weighted"].mean()),
        "f1_weighted_std": float(table["f1_weighted"].std(ddof=1)) if len(table) > 1 else 0.0,
        "f1_weighted_ci95": list(bootstrap_ci(y_all, p_all.argmax(1), pooled_groups(folds), cfg.seed)),
    }
    if "frozen_lr_f1_weighted" in table:
        result["frozen_lr_f1_weighted_mean"] = float(table["frozen_lr_f1_weighted"].mean())
        result["frozen_lr_f1_weighted_std"] = float(table["frozen_lr_f1_weighted"].std(ddof=1))
    write_json(out / "cv.json", result)
    return result


def pooled_groups(folds: Split) -> np.ndarray:
    """Group of each pooled out-of-fold prediction, in the order ``cross_validate`` pools them."""
    return np.concatenate([folds.loc[folds["fold"] == f, "group"].to_numpy()
                           for f in sorted(folds["fold"].unique())])


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, seed: int, n: int = 2000
                 ) -> tuple[float, float]:
    """95% bootstrap interval of the weighted F1, resampling whole groups (subjects) with replacement."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in ids}
    vals = []
    for _ in range(n):
        i = np.concatenate([rows[g] for g in rng.choice(ids, size=len(ids))])
        vals.append(f1_score(y[i], pred[i], average="weighted", zero_division=0))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


__all__ = ["TrainingInterrupted", "Reporter", "SilentReporter", "train", "cross_validate", "fit",
           "evaluate", "subset"]
