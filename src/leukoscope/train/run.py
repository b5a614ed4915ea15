"""``train``: the one entry point for every model family; the registry says which trainer runs."""

from __future__ import annotations

from pathlib import Path

from leukoscope.bundle import Bundle
from leukoscope.data.manifest import Manifest
from leukoscope.progress import SILENT, Progress
from leukoscope.train import rundir
from leukoscope.train.classical import train_classical
from leukoscope.train.config import TrainConfig
from leukoscope.train.network import train_network


def train(m: Manifest, config: TrainConfig, out: Path, progress: Progress = SILENT) -> Bundle:
    """Train ``config.model`` on ``m`` with a grouped train / val / test split; the bundle in ``out/bundle``.

    Networks: ``train_network``; classical pipelines (on ``config.features``): ``train_classical``.
    A finished run directory is not retrained: rerunning returns its bundle.
    """
    run = train_classical if config.family == "classical" else train_network
    with rundir.held(Path(out)):
        return run(m, config, out, progress)
