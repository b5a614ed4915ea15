"""The run directory every ``train`` writes into, and what protects it.

::

    config.json / config.yaml   the resolved TrainConfig (``--config out/config.yaml`` replays it)
    metrics.json                validation and test figures
    bundle/                     the model bundle (``load_bundle(out / "bundle")``)
    .done                       the run finished: rerunning returns its bundle, nothing is retrained
    skipped.json                images that could not be used, with the reason
    (networks) checkpoint.safetensors, best.safetensors, history.csv, curves.png

A directory holding another run's progress is never mixed with a new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from leukoscope.bundle import load_bundle, write_json
from leukoscope.errors import ConfigError
from leukoscope.train import checkpoint
from leukoscope.train.config import TrainConfig

if TYPE_CHECKING:
    from leukoscope.bundle import Bundle

BUNDLE = "bundle"
DONE = ".done"


def begin(config: TrainConfig, out: Path, family: str) -> tuple[Path, TrainConfig, Bundle | None]:
    """Open the run of ``config`` (a model of ``family``) in ``out``: its resolved settings, and its bundle
    when the run already finished. Otherwise ``out`` is claimed (refused if it holds another run's
    progress) and the settings are written into it."""
    out, cfg = Path(out), config.resolved()
    if cfg.family != family:
        raise ConfigError(f"--model {cfg.model} is a {cfg.family} model, not a {family} one")
    if (out / DONE).exists() and (out / BUNDLE).is_dir():
        check_same(out, cfg)
        return out, cfg, load_bundle(out / BUNDLE)
    out.mkdir(parents=True, exist_ok=True)
    check_same(out, cfg)
    checkpoint.find(out)  # an old pickle checkpoint is refused now, not after decoding every image
    cfg.write(out)
    return out, cfg, None


def check_same(out: Path, cfg: TrainConfig) -> None:
    """Refuse to mix two different runs in one directory. A directory with no finished epoch (a start
    that failed before its first checkpoint, leaving only its config) holds nothing to protect: the
    corrected command takes it over."""
    f = out / "config.json"
    if f.exists() and not cfg.same_as(json.loads(f.read_text())) and has_progress(out):
        raise ConfigError(f"{out} holds a run with other settings (see {f}); "
                          "use another --out, or delete it to start over")


def has_progress(out: Path) -> bool:
    """Whether ``out`` (or one of its CV folds) holds a finished epoch or a finished run."""
    return any((run / name).exists() for run in (out, *out.glob("fold-*"))
               for name in (checkpoint.NAME, checkpoint.LEGACY, DONE))


def mark_done(out: Path) -> None:
    (out / DONE).write_text("ok\n")


def write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    """``skipped.json``: the images a run could not use and why (nothing when there were none)."""
    if skipped:
        write_json(out / "skipped.json", [{"path": p, "reason": r} for p, r in skipped])
