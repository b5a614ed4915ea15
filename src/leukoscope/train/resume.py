"""What a network run saves after every epoch and resumes from, bit for bit as if never stopped.

The checkpoint (``train.checkpoint``, no pickle) holds the model, optimiser and schedule, every
random state an epoch draws from, and the run's ``Progress``; it is only resumed by a run with the
same settings and the exact same split (its ``fingerprint``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.data.splits import Split
from leukoscope.errors import ConfigError
from leukoscope.train import checkpoint
from leukoscope.train.config import TrainConfig
from leukoscope.train.forward import device_of

#: What restoring a checkpoint that parses but does not fit this run raises (a foreign or edited file).
BAD_STATE = (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError)


@dataclass
class Progress:
    """How far the epochs got (early stopping included)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False
    #: figures computed once per run (the frozen-feature baseline)
    extra: dict[str, Any] = field(default_factory=dict)


def fingerprint(cfg: TrainConfig, split: Split) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings and the exact split."""
    blob = "\n".join(f"{p},{s}" for p, s in zip(split["path"], split["side"], strict=True))
    return {"config": cfg.as_dict(), "split": hashlib.sha1(blob.encode()).hexdigest()}


def saved_state(out: Path, cfg: TrainConfig, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in ``out``, if any; one that belongs to other settings or another split is refused."""
    found = checkpoint.find(out)
    if found is None:
        return None
    state = checkpoint.load(found)
    try:
        old = state["fingerprint"]
        same = old["split"] == expected["split"] and cfg.same_as(old["config"])
    except BAD_STATE as e:
        raise checkpoint.unreadable(found, e) from None
    if not same:
        raise ConfigError(f"{out} holds a run with other settings or another split; "
                          "use another --out, or delete it to start over")
    return state


def save(path: Path, expected: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
         sched: torch.optim.lr_scheduler.LRScheduler, progress: Progress, gen: torch.Generator,
         rng: np.random.Generator) -> None:
    """The checkpoint after an epoch."""
    checkpoint.save(path, {
        "fingerprint": expected, "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "history": progress.history, "epoch": progress.epoch,
        "best_score": progress.best_score, "best_epoch": progress.best_epoch,
        "bad_epochs": progress.bad_epochs, "extra": progress.extra, "stopped": progress.stopped,
        "rng": _rng_states(gen, rng, device_of(model))})


def restore(state: dict[str, Any], path: Path, model: nn.Module, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator,
            rng: np.random.Generator) -> Progress:
    """Load ``state`` (read from ``path``) into the run's objects; the progress it had reached."""
    try:
        _check_progress(state)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _match_layout(opt)
        sched.load_state_dict(state["scheduler"])
        progress = Progress(history=state["history"], epoch=state["epoch"], best_score=state["best_score"],
                            best_epoch=state["best_epoch"], bad_epochs=state["bad_epochs"],
                            extra=state["extra"])
        _set_rng_states(state["rng"], gen, rng, device_of(model))
        progress.stopped = bool(state["stopped"])
    except BAD_STATE as e:
        raise checkpoint.unreadable(path, e) from None
    return progress


def _check_progress(state: dict[str, Any]) -> None:
    """The progress fields' types, so an edited checkpoint is refused here rather than failing epochs later
    (a ``TypeError`` deep in the loop)."""
    def whole(v: Any, least: int = 0) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    for key, ok in (("epoch", whole(state["epoch"])), ("best_epoch", whole(state["best_epoch"], -1)),
                    ("bad_epochs", whole(state["bad_epochs"])),
                    ("best_score", isinstance(state["best_score"], int | float)),
                    ("history", isinstance(state["history"], list)
                     and all(isinstance(row, dict) for row in state["history"])),
                    ("extra", isinstance(state["extra"], dict))):
        if not ok:
            raise ValueError(f"{key} is {type(state[key]).__name__} {str(state[key])[:40]!r}")


def _rng_states(gen: torch.Generator, rng: np.random.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state an epoch draws from: augmentation and batch order (the run's own
    generators), dropout (torch's global one; on a GPU, that device's), and numpy's and Python's
    global ones for the rest."""
    states = {"augment": gen.get_state(), "order": rng.bit_generator.state, "torch": torch.get_rng_state(),
              "numpy": np.random.get_state(legacy=False), "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(saved: dict[str, Any], gen: torch.Generator, rng: np.random.Generator,
                    device: torch.device) -> None:
    """A CUDA state is restored only onto a CUDA run (a run moved between devices resumes, not bit
    for bit); a CPU checkpoint resumed on a GPU keeps the GPU's seeded state."""
    if device.type == "cuda" and "cuda" in saved:
        torch.cuda.set_rng_state(saved["cuda"], device)
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
