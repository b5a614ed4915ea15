"""Training: ``train`` (every family) and ``cross_validate`` (networks), configured by ``TrainConfig``.

Modules, from the bottom: ``config`` (settings), ``data`` (rows, split,
decoded pixels), ``heldout`` (calibrated figures), ``rundir`` (the run directory and its protection),
``checkpoint`` + ``resume`` (resumable state), ``augment`` / ``forward`` / ``warmstart``
(network pieces), ``fit`` (the epoch loop), ``network`` and ``classical`` (a run of each family),
``cv`` (K-fold), ``run`` (``train``). The names below load their module on first use: most import
torch, and the CLI must start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leukoscope.train.classical import train_classical
    from leukoscope.train.config import TrainConfig
    from leukoscope.train.cv import cross_validate
    from leukoscope.train.fit import TrainingInterrupted
    from leukoscope.train.network import train_network
    from leukoscope.train.run import train

_HOME = {"train": "run", "train_network": "network", "train_classical": "classical",
         "cross_validate": "cv", "TrainingInterrupted": "fit", "TrainConfig": "config"}

__all__ = ["TrainConfig", "TrainingInterrupted", "cross_validate", "train",
           "train_classical", "train_network"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
