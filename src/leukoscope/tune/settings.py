"""What defines a study (``TuneSettings``: every worker joining it brings the same) and its data's
grouped train / test split (``holdout``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from leukoscope.data.manifest import Manifest
from leukoscope.errors import ConfigError

if TYPE_CHECKING:  # splits import scikit-learn; a worker running only the study loop needs none of it
    from leukoscope.data.splits import Split

#: ``--metric`` name -> key in ``evaluate.metrics.classification_metrics``.
METRICS = {"balanced_accuracy": "balanced_accuracy", "weighted_f1": "f1_weighted", "macro_f1": "f1_macro"}
PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "none": optuna.pruners.NopPruner,
}
#: Repeats of a classical model's K-fold CV (``TuneSettings.repeats``).
CLASSICAL_REPEATS = 3


@dataclass(frozen=True)
class TuneSettings:
    """What defines a study: every worker joining it must bring the same settings."""

    model: str
    metric: str = "balanced_accuracy"
    features: str = "handcrafted"
    cv: int = 5
    test: float = 0.2
    seed: int = 0
    pruner: str = "median"
    fixed: dict[str, Any] = field(default_factory=dict)
    #: classical models: the K-fold CV repeated on this many shufflings, averaged. Forty trials
    #: ranked by one noisy CV pick a lucky configuration (the winner's curse); repeats cut the
    #: noise at a small cost. Networks train once per fold (1).
    repeats: int | None = None

    def check(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.cv < 2:
            raise ConfigError(f"--cv must be at least 2, got {self.cv}")
        if not 0 < self.test < 1:
            raise ConfigError(f"--test must be a fraction in (0, 1), got {self.test}")
        if self.repeats is not None and self.repeats < 1:
            raise ConfigError(f"--repeats must be at least 1, got {self.repeats}")

    @property
    def classical_repeats(self) -> int:
        return self.repeats or CLASSICAL_REPEATS

    @property
    def key(self) -> str:
        return METRICS[self.metric]


def holdout(m: Manifest, test: float, seed: int) -> Split:
    """The grouped train / test split of a study (``side`` is train or test)."""
    from leukoscope.data.splits import train_val_test

    return train_val_test(m, val=0.0, test=test, seed=seed)
