"""What a trial scores: grouped K-fold CV of a classical pipeline or a network on the train side.

A classical model's objective is the mean fold score of grouped K-fold CV on cached features
(``leaderboard.cross_validate_model``), reported after each fold so the pruner can stop a poor
configuration early. A network's is the pooled out-of-fold score of ``train.cross_validate``
on the train side; each epoch's validation balanced accuracy (first fold) goes to the pruner.
Search spaces are the registry's (``get_model(name).space``); ``fixed`` pins parameters of the
space or sets other builder / ``TrainConfig`` settings. Each objective also scores a
configuration once on the held-out test side (``holdout_scores``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import Trial

from leukoscope.data.manifest import Manifest, classes, label_indices, labelled
from leukoscope.errors import ConfigError
from leukoscope.progress import SILENT, Advance, Progress
from leukoscope.tune.settings import TuneSettings

if TYPE_CHECKING:
    from leukoscope.data.splits import Split

#: The held-out figures a study keeps of a configuration (what the metrics give, scalars only).
HELD_OUT_KEYS = ("n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc")


def _held_out(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: figures[k] for k in HELD_OUT_KEYS if k in figures}


def _parameter_errors() -> tuple[type[Exception], ...]:
    """What scikit-learn, XGBoost and LightGBM raise for a parameter value they refuse: each checks
    values only when fitting, so a bad ``--fix C=abc`` passes the builder and fails in the CV."""
    from lightgbm.basic import LightGBMError
    from sklearn.utils._param_validation import InvalidParameterError
    from xgboost.core import XGBoostError

    return InvalidParameterError, XGBoostError, LightGBMError


class _Objective:
    """What both objectives share: a registry spec, the settings, and how a trial's params are drawn."""

    settings: TuneSettings
    spec: Any

    def params(self, trial: Trial) -> dict[str, Any]:
        """The model's registered space, with the user's ``--fix`` settings on top."""
        space = self.spec.space
        if space is None:
            raise ConfigError(f"--model {self.settings.model!r} declares no search space")
        return {**space(trial), **self.settings.fixed}


class ClassicalObjective(_Objective):
    """Grouped K-fold CV of a classical pipeline on the train side's cached features."""

    family = "classical"

    @staticmethod
    def rows(m: Manifest, settings: TuneSettings) -> Manifest:
        """The rows a study splits and searches on: those ``leukoscope train`` and ``benchmark`` take
        by default (labelled, rare classes merged), so all three hold out the same test side."""
        from leukoscope.data.rare import rare_classes

        return rare_classes(labelled(m), None, None)[0]

    def __init__(self, settings: TuneSettings, split: Split, out: Path, *, cache: Path | None = None,
                 progress: Progress = SILENT):
        from leukoscope.data.splits import kfold
        from leukoscope.features.cache import feature_matrix
        from leukoscope.models.registry import get_model

        self.settings, self.spec = settings, get_model(settings.model)
        self.classes = classes(split)
        self._split, self._cache = split, cache
        train = split[split["side"] == "train"].drop(columns="side")
        kept, self.X, self.features, self.skipped = feature_matrix(train, settings.features, cache=cache,
                                                                   progress=progress)
        # each repeat shuffles the groups into folds anew (kfold keeps the row order); its seed wraps,
        # as numpy seeds stop at 2**32 - 1
        self.folds = [kfold(kept, settings.cv, (settings.seed + r) % 2**32)["fold"].to_numpy()
                      for r in range(settings.classical_repeats)]
        self.y = np.asarray(label_indices(kept, self.classes))
        self.default_params()  # a fixed setting the builder does not take fails here, not in every trial

    def default_params(self) -> dict[str, Any]:
        self._build(self.settings.fixed)
        return dict(self.settings.fixed)

    def _build(self, params: dict[str, Any]) -> Any:
        try:
            return self.spec.build(seed=self.settings.seed, **params)
        except TypeError as e:
            raise ConfigError(f"--model {self.settings.model!r}: bad parameters {sorted(params)} ({e})"
                              ) from None

    def __call__(self, trial: Trial) -> float:
        return self.score(self.params(trial), trial)[0]

    def score(self, params: dict[str, Any], trial: Trial | None = None, name: str = ""
              ) -> tuple[float, list[float]]:
        """Mean fold score of ``params`` and the fold scores; with a ``trial``, each fold is reported
        to its pruner."""
        from threadpoolctl import threadpool_limits

        from leukoscope.crossval import cross_validate_model

        estimator = self._build(params)
        scores: list[float] = []

        def on_fold(_: int, figures: dict) -> None:
            scores.append(float(figures[self.settings.key]))
            if trial is not None:
                trial.report(float(np.mean(scores)), len(scores) - 1)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"after fold {len(scores)}")

        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            try:
                for folds in self.folds:
                    cross_validate_model(estimator, self.X, self.y, folds, self.classes, on_fold)
            except _parameter_errors() as e:  # looked up only when something is raised
                named = [k for k in self.settings.fixed if re.search(rf"\b{re.escape(k)}\b", str(e))]
                if not named:  # not a value the user set: a bug, shown as it is
                    raise
                raise ConfigError(f"{', '.join(f'--fix {k}' for k in named)}: {' '.join(str(e).split())}"
                                  ) from None
            finally:
                if trial is not None:
                    trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores)), scores

    def holdout_scores(self, params: dict[str, Any], name: str) -> dict[str, Any]:
        """Fit on every train-side row, score the test side (its features are read only now)."""
        from leukoscope.bundle.classical import class_probabilities
        from leukoscope.evaluate.metrics import classification_metrics
        from leukoscope.features.cache import feature_matrix

        if not hasattr(self, "_test"):
            test = self._split[self._split["side"] == "test"].drop(columns="side")
            kept, X, _, skipped = feature_matrix(test, self.settings.features, cache=self._cache)
            if not len(kept):
                raise ConfigError("no image of the test side could be read; nothing to score")
            self._test = (X, np.asarray(label_indices(kept, self.classes)))
            self.skipped = self.skipped + skipped
        X, y = self._test
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = self._build(params).fit(self.X, self.y)
            return _held_out(classification_metrics(y, class_probabilities(model, X, len(self.classes)),
                                                    self.classes))

    def config_file(self, params: dict[str, Any]) -> dict[str, Any]:
        """What ``leukoscope benchmark --config`` reads."""
        return {"family": "classical", "model": self.settings.model, "features": self.settings.features,
                "params": params, "cv": self.settings.cv, "seed": self.settings.seed}


class _EpochPruning:
    """Progress of a trial's training: each epoch of the first CV fold goes to the trial's pruner,
    everything else (bars, notes) to ``inner``."""

    def __init__(self, trial: Trial, inner: Progress):
        self.trial, self.inner = trial, inner
        self.fold, self.last = 0, 0

    def task(self, description: str, total: int | None = None) -> Advance:
        return self.inner.task(description, total)

    def done(self, description: str) -> None:
        self.inner.done(description)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def epoch(self, row: Mapping[str, Any]) -> None:
        if row["epoch"] <= self.last:  # epochs restart: the next fold
            self.fold += 1
        self.last = row["epoch"]
        value = row.get("val_balanced_accuracy", math.nan)
        if self.fold == 0 and not math.isnan(value):
            self.trial.report(float(value), int(row["epoch"]))
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"after epoch {row['epoch']}")


class NetworkObjective(_Objective):
    """Grouped K-fold CV of a network training run (``train.cross_validate``) on the train side."""

    family = "network"

    @staticmethod
    def rows(m: Manifest, settings: TuneSettings) -> Manifest:
        """The rows a study splits and searches on: the rows ``leukoscope train`` would take (rare
        classes merged or dropped, ``--fix subset=F`` of the groups) for the same settings and seed,
        so the retrained best configuration holds out the same test side."""
        from leukoscope.train.config import TrainConfig
        from leukoscope.train.data import run_rows

        cfg = TrainConfig.build(None, **{"model": settings.model, "seed": settings.seed, **settings.fixed})
        return run_rows(m, cfg)[0]

    def __init__(self, settings: TuneSettings, split: Split, out: Path, *, cache: Path | None = None,
                 progress: Progress = SILENT):
        from leukoscope.models.registry import get_model

        if settings.repeats not in (None, 1):
            raise ConfigError("--repeats is for classical models: a network trains once per fold")
        self.settings, self.spec = settings, get_model(settings.model)
        self.classes = classes(split)
        self.out, self.progress = Path(out), progress
        self.manifest = split.drop(columns="side")
        self.train = split[split["side"] == "train"].drop(columns="side").reset_index(drop=True)
        self.test_paths = set(split.loc[split["side"] == "test", "path"])
        self.skipped: list[tuple[str, str]] = []
        self.features = None
        self.default_params()

    def _config(self, params: dict[str, Any], **extra: Any) -> Any:
        from leukoscope.train.config import TrainConfig

        s = self.settings
        return TrainConfig.build(None, **{"model": s.model, "seed": s.seed, "test": s.test, **params,
                                          **extra}).resolved()

    def default_params(self) -> dict[str, Any]:
        self._config(self.settings.fixed)
        return dict(self.settings.fixed)

    def __call__(self, trial: Trial) -> float:
        return self.score(self.params(trial), trial, f"trial-{trial.number:04d}")[0]

    def score(self, params: dict[str, Any], trial: Trial | None = None, name: str = "default"
              ) -> tuple[float, list[float]]:
        """Pooled out-of-fold score of ``params``; with a ``trial``, epochs go to its pruner."""
        from leukoscope.train import cross_validate

        cfg = self._config(params, cv=self.settings.cv, subset=1.0)  # the rows are the subset already
        folder = self.out / "trials" / name
        if folder.exists():  # left by a killed worker under the same number: not resumable as such
            shutil.rmtree(folder)
        progress = _EpochPruning(trial, self.progress) if trial is not None else self.progress
        try:
            result = cross_validate(self.train, cfg, folder, progress)
        finally:
            for f in [*folder.rglob("*.pt"), *folder.rglob("*.safetensors")]:
                f.unlink()  # weights of a trial are never reused; keep cv.json and histories only
        folds = [float(f[self.settings.key]) for f in result["folds"] if self.settings.key in f]
        if trial is not None:
            trial.set_user_attr("fold_scores", folds)
        return float(result["pooled"][self.settings.key]), folds

    def holdout_scores(self, params: dict[str, Any], name: str) -> dict[str, Any]:
        """Train on the train side (val carved from it), score the study's test side once."""
        import fcntl

        from leukoscope.train import train

        cfg = self._config(params, subset=1.0)
        digest = hashlib.sha1(json.dumps(cfg.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
        folder = self.out / "final" / f"{name}-{digest}"  # new defaults or code: a new run, not a clash
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{folder.name}.lock", "w") as lock:  # workers sharing out/ train it once
            fcntl.flock(lock, fcntl.LOCK_EX)
            bundle = train(self.manifest, cfg, folder, self.progress)
        split = bundle.split()
        if split is not None and set(split.loc[split["side"] == "test", "path"]) != self.test_paths:
            raise ConfigError("the retrained model's test side differs from the study's (unreadable images "
                              "or --fix subset?); its held-out figures would not be comparable")
        figures = bundle.metrics()["test"]
        return _held_out(figures)

    def config_file(self, params: dict[str, Any]) -> dict[str, Any]:
        """What ``leukoscope train --config`` reads: every TrainConfig setting, resolved."""
        return self._config(params).as_dict()


OBJECTIVES: dict[str, type[ClassicalObjective] | type[NetworkObjective]] = {
    "classical": ClassicalObjective, "network": NetworkObjective}
