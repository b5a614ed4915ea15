"""What defines a study (``TuneSettings``: every worker joining it brings the same) and its data's
grouped train / test split (``holdout``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from leukoscope.data.manifest import Manifest
from leukoscope.errors import ConfigError
from leukoscope.progress import SILENT, Progress

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
    #: the test fraction ``leukoscope train`` holds out by default: the same test side for the same seed
    test: float = 0.15
    seed: int = 0
    pruner: str = "median"
    fixed: dict[str, Any] = field(default_factory=dict)
    #: classical models: the K-fold CV repeated on this many shufflings, averaged. Forty trials
    #: ranked by one noisy CV pick a lucky configuration (the winner's curse); repeats cut the
    #: noise at a small cost. Networks train once per fold (1).
    repeats: int | None = None
    #: group the audit's duplicate clusters before splitting (``audit.groups``)
    dedupe: bool = True
    #: a split file (``data split --out``): its test side is held out, train and val are searched on
    split: str | None = None

    def check(self) -> None:
        """Refuse a bad setting in one line naming it, before any data is read or study opened."""
        from leukoscope.models.registry import list_models
        from leukoscope.tune.objectives import OBJECTIVES

        # a patient model scores patients, not the cells a study's CV folds (an unknown one: get_model)
        tunable = [name for family in OBJECTIVES for name in list_models(family=family)]
        if self.model in list_models() and self.model not in tunable:
            raise ConfigError(f"--model {self.model!r} cannot be tuned; tune searches "
                              f"{' and '.join(OBJECTIVES)} models: {', '.join(tunable)}")
        # numpy seeds only take [0, 2**32): anything else would fail deep in the split
        if type(self.seed) is not int or not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
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


def holdout(m: Manifest, test: float, seed: int, *, dedupe: bool = True, split: str | None = None,
            cache: Path | None = None, progress: Progress = SILENT) -> Split:
    """The grouped train / test split of a study (``side`` is train or test): the protocol every
    command shares (``train.data.protocol_split``), so its test side is the one ``leukoscope train``
    holds out for the same rows, ``test`` and seed; with a ``split`` file, that file's test side
    (its val side joins train: the search's CV needs no other)."""
    from leukoscope.train.data import protocol_split

    out = protocol_split(m, val=0.0, test=test, seed=seed, dedupe=dedupe, split_file=split, cache=cache,
                         progress=progress)
    if "side" not in out or not (out["side"] == "test").any():
        raise ConfigError(f"{split}: tune needs a split with a test side")
    return out.assign(side=out["side"].replace({"val": "train"}))
