"""Hyperparameter search with Optuna: grouped CV on the train side only, the test side scored once.

The protocol, and why each piece is there:

- ``holdout`` makes one grouped, stratified train / test split (``data.splits.train_val_test``
  with no val side: the same test side ``leukoscope train`` holds out for the same ``test`` and
  seed). The objective only ever sees train-side rows (their features or pixels); the test side is
  read once, after the search, to score the best configuration and the model's defaults alike.
- A classical model's objective is the mean fold score of grouped K-fold CV on cached features
  (``leaderboard.cross_validate_model``), reported after each fold so the pruner can stop a poor
  configuration early. A network's is the pooled out-of-fold score of ``train.cross_validate``
  on the train side; each epoch's validation balanced accuracy (first fold) goes to the pruner.
- Search spaces are the registry's (``get_model(name).space``); ``fixed`` pins parameters of the
  space (``PartialFixedSampler``) or sets other builder / ``TrainConfig`` settings.
- Studies live in an RDB storage (SQLite in the output folder unless ``storage`` is given) with
  heartbeats: a killed run resumes where it stopped, and several processes (or machines, with a
  server database) can work on one study. Finished trials (complete or pruned) count towards
  ``n_trials``; the storage numbers trials atomically, and a trial that finds ``n_trials`` others
  already claimed before it is dropped unrun, so parallel workers finish exactly ``n_trials``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, Trial, TrialState

from leukoscope.data.manifest import Manifest, classes, label_indices, warnings_for
from leukoscope.errors import ConfigError, LeukoscopeError

if TYPE_CHECKING:  # splits import scikit-learn; a worker running only the study loop needs none of it
    from leukoscope.data.splits import Split

#: ``--metric`` name -> key in ``evaluate.metrics.classification_metrics``.
METRICS = {"balanced_accuracy": "balanced_accuracy", "weighted_f1": "f1_weighted", "macro_f1": "f1_macro"}
PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "none": optuna.pruners.NopPruner,
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CLAIMED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
#: Repeats of a classical model's K-fold CV (``TuneSettings.repeats``).
CLASSICAL_REPEATS = 3
#: Consecutive failed trials (exceptions in a model) after which a worker gives up.
MAX_FAILURES = 3
BEST_FILE, SUMMARY_FILE, TRIALS_FILE, REPORT_FILE = "best.yaml", "best.json", "trials.csv", "report.html"


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


def storage_url(out: Path, storage: str | None = None) -> str:
    """``storage`` as given, else an SQLite file in ``out``."""
    return storage or f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def _fingerprint(split: Split) -> str:
    """The data a study was run on: file names, labels and sides (not absolute paths, so machines
    mounting the data elsewhere can share a study)."""
    rows = sorted(f"{Path(p).name},{lab},{s}" for p, lab, s in zip(split["path"], split["label"],
                                                                    split["side"], strict=True))
    return hashlib.sha1("\n".join(rows).encode()).hexdigest()[:16]


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random stream is seeded by (seed, trial number).

    One worker replays a study exactly; parallel workers, whose trials get distinct numbers from
    the storage, never draw the same start-up configurations (a shared seed would make them).
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._tpe = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        state = np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0]
        self._tpe = optuna.samplers.TPESampler(seed=int(state))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
                        ) -> dict[str, Any]:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._tpe.after_trial(study, trial, state, values)


def open_study(settings: TuneSettings, url: str, name: str, data: str, *,
               heartbeat: tuple[int, int] = (10, 30)) -> optuna.Study:
    """Create or load the study ``name`` at ``url``; refuse one made with other settings or data."""
    engine: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        Path(url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # workers wait for each other's writes
    from sqlalchemy.exc import IntegrityError, OperationalError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.PartialFixedSampler(settings.fixed, TrialSeededSampler(settings.seed))
        for attempt in range(5):
            try:
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, grace_period=heartbeat[1],
                                                     heartbeat_interval=heartbeat[0])
                break
            except (IntegrityError, OperationalError):  # workers starting together race to create tables
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
            except Exception as e:  # bad URL, missing driver, unreachable server
                raise ConfigError(f"--storage {url}: cannot open ({type(e).__name__}: {e})") from None
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                pruner=PRUNERS[settings.pruner](), load_if_exists=True)
    mine = {"settings": json.loads(json.dumps(asdict(settings))), "data": data}
    theirs = {k: study.user_attrs.get(k) for k in mine}
    if theirs["settings"] is None:
        for k, v in mine.items():
            study.set_user_attr(k, v)
    elif theirs != mine:
        diff = [k for k in mine["settings"] if mine["settings"][k] != theirs["settings"].get(k)]
        what = f"settings {', '.join(diff)}" if diff else "data"
        raise ConfigError(f"study {name!r} in {url} was made with other {what}; "
                          "use another --study or --out, or the same settings")
    return study


# ---------------------------------------------------------------- objectives


def _scalar_figures(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    from leukoscope.evaluate.metrics import classification_metrics

    full = classification_metrics(y, probs, class_names)
    return {k: full[k] for k in ("n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc")
            if k in full}


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
        """The rows a study splits and searches on."""
        return m

    def __init__(self, settings: TuneSettings, split: Split, out: Path, *, cache: Path | None = None,
                 on_features: Callable[[int, int], None] | None = None, reporter: Any = None):
        from leukoscope.data.splits import kfold
        from leukoscope.features.cache import feature_matrix
        from leukoscope.models.registry import get_model

        self.settings, self.spec = settings, get_model(settings.model)
        self.classes = classes(split)
        self._split, self._cache = split, cache
        train = split[split["side"] == "train"].drop(columns="side")
        kept, self.X, self.features, self.skipped = feature_matrix(train, settings.features, cache=cache,
                                                                   on_progress=on_features)
        # each repeat shuffles the groups into folds anew (kfold keeps the row order)
        self.folds = [kfold(kept, settings.cv, settings.seed + r)["fold"].to_numpy()
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

        from leukoscope.leaderboard import cross_validate_model

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
            finally:
                if trial is not None:
                    trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores)), scores

    def holdout_scores(self, params: dict[str, Any], name: str) -> dict[str, Any]:
        """Fit on every train-side row, score the test side (its features are read only now)."""
        from leukoscope.features.cache import feature_matrix
        from leukoscope.models.classical import class_probabilities

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
            return _scalar_figures(y, class_probabilities(model, X, len(self.classes)), self.classes)

    def config_file(self, params: dict[str, Any]) -> dict[str, Any]:
        """What ``leukoscope benchmark --config`` reads."""
        return {"family": "classical", "model": self.settings.model, "features": self.settings.features,
                "params": params, "cv": self.settings.cv, "seed": self.settings.seed}


class _EpochPruning:
    """A training ``Reporter`` that reports each epoch of the first CV fold to the trial's pruner
    and forwards progress bars to ``inner``."""

    def __init__(self, trial: Trial, inner: Any = None):
        self.trial, self.inner = trial, inner
        self.fold, self.last = 0, 0

    def task(self, description: str, total: int) -> Callable[[int], None]:
        return self.inner.task(description, total) if self.inner else (lambda n: None)

    def done(self, description: str) -> None:
        if self.inner:
            self.inner.done(description)

    def epoch(self, row: dict[str, Any]) -> None:
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
        """The rows a study splits and searches on: ``--fix subset=F`` takes the groups
        ``leukoscope train`` would take for the same subset and seed, so the retrained best
        configuration holds out the same test side."""
        from leukoscope.data.manifest import labelled
        from leukoscope.train.data import subset

        return subset(labelled(m), float(settings.fixed.get("subset", 1.0)), settings.seed)

    def __init__(self, settings: TuneSettings, split: Split, out: Path, *, cache: Path | None = None,
                 on_features: Callable[[int, int], None] | None = None, reporter: Any = None):
        from leukoscope.models.registry import get_model

        if settings.repeats not in (None, 1):
            raise ConfigError("--repeats is for classical models: a network trains once per fold")
        self.settings, self.spec = settings, get_model(settings.model)
        self.classes = classes(split)
        self.out, self.reporter = Path(out), reporter
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
        reporter = _EpochPruning(trial, self.reporter) if trial is not None else self.reporter
        try:
            result = cross_validate(self.train, cfg, folder, reporter)
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
            bundle = train(self.manifest, cfg, folder, self.reporter)
        split = bundle.split()
        if split is not None and set(split.loc[split["side"] == "test", "path"]) != self.test_paths:
            raise ConfigError("the retrained model's test side differs from the study's (unreadable images "
                              "or --fix subset?); its held-out figures would not be comparable")
        figures = bundle.metrics()["test"]
        return {k: figures[k] for k in ("n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted",
                                        "roc_auc") if k in figures}

    def config_file(self, params: dict[str, Any]) -> dict[str, Any]:
        """What ``leukoscope train --config`` reads: every TrainConfig setting, resolved."""
        return self._config(params).as_dict()


OBJECTIVES: dict[str, type[ClassicalObjective] | type[NetworkObjective]] = {
    "classical": ClassicalObjective, "network": NetworkObjective}


# ---------------------------------------------------------------- the run


class _Surplus(Exception):
    """This trial came after ``n_trials`` claimed ones (another worker got there first)."""


class _TrialFailed(Exception):
    """A model raised inside one trial; the trial is recorded as failed and the study goes on."""


@dataclass
class TrialEvent:
    """What a progress display needs after each trial of this worker."""

    number: int
    state: str
    value: float | None
    finished: int
    total: int
    best: float | None
    error: str | None = None


@dataclass
class TuneResult:
    study: optuna.Study
    settings: TuneSettings
    family: str
    protocol: str
    warning: str | None
    split: dict[str, int]
    best: dict[str, Any]
    default: dict[str, Any]
    counts: dict[str, int]
    config: dict[str, Any]
    features: dict[str, Any] | None
    skipped: list[tuple[str, str]]
    seconds: float


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    return {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}


def _best_value(study: optuna.Study) -> float | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(t.value for t in done) if done else None  # type: ignore[type-var]


def run_trials(study: optuna.Study, objective: Callable[[Trial], float], n_trials: int, *,
               timeout: float | None = None, poll: float = 1.0,
               on_trial: Callable[[TrialEvent], None] | None = None) -> None:
    """Run trials until ``n_trials`` of the study are finished (by any worker) or ``timeout`` s pass.

    A worker waits for other workers' running trials rather than starting more than needed; a
    running trial whose worker died is failed once its heartbeat is stale, and then redone.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    failures: list[str] = []

    def guarded(trial: Trial) -> float:
        _first_heartbeat(study, trial)
        claimed = study.get_trials(deepcopy=False, states=CLAIMED)
        if sum(t.number < trial.number for t in claimed) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus
        try:
            return objective(trial)
        except (optuna.TrialPruned, LeukoscopeError):
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise _TrialFailed(str(e)) from e

    def callback(study: optuna.Study, t: FrozenTrial) -> None:
        if t.user_attrs.get("surplus"):
            return
        error = t.user_attrs.get("error")
        failures[:] = [*failures, error] if error else []
        if on_trial:
            counts = _counts(study)
            finished = counts["complete"] + counts["pruned"]
            on_trial(TrialEvent(t.number, t.state.name.lower(), t.value, finished, n_trials,
                                _best_value(study), error))

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        counts = _counts(study)
        finished, active = counts["complete"] + counts["pruned"], counts["running"] + counts["waiting"]
        if finished >= n_trials or (deadline is not None and time.monotonic() >= deadline):
            return
        if finished + active >= n_trials:  # the rest are running elsewhere
            time.sleep(poll)
            continue
        study.optimize(guarded, n_trials=1, catch=(_Surplus, _TrialFailed), callbacks=[callback])
        if len(failures) >= MAX_FAILURES:
            raise ConfigError(f"{len(failures)} trials in a row failed; last error: {failures[-1]}")


def _first_heartbeat(study: optuna.Study, trial: Trial) -> None:
    """Record a trial's first heartbeat before its objective runs.

    Optuna records heartbeats from a thread that may not have run yet when a worker is killed; a
    RUNNING trial with no heartbeat at all is never failed as stale, and every other worker would
    wait for it forever (seen: a resumed study hanging under load). Optuna's own optimise loop uses
    the same private handles (``study._storage``, ``trial._trial_id``).
    """
    storage = study._storage
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
        storage.record_heartbeat(trial._trial_id)


def improvement(best: list[float], default: list[float], k: int) -> dict[str, float]:
    """Mean paired fold improvement of ``best`` over ``default`` and its standard error.

    Fold scores of K-fold CV share most of their training rows, so the plain standard error is
    too small; Nadeau & Bengio's correction (Machine Learning 52:239, 2003; for repeated CV,
    Bouckaert & Frank, PAKDD 2004) scales the variance by ``1/n + n_test/n_train`` = ``1/n + 1/(k-1)``.
    Without paired folds (unequal lengths) the standard error is 0: plain comparison.
    """
    if len(best) != len(default) or len(best) < 2:
        return {"mean": float(np.mean(best) - np.mean(default)) if best and default else 0.0, "se": 0.0}
    d = np.asarray(best, float) - np.asarray(default, float)
    return {"mean": float(d.mean()), "se": float(math.sqrt(d.var(ddof=1) * (1 / len(d) + 1 / (k - 1))))}


def best_params(study: optuna.Study, objective: Any) -> dict[str, Any]:
    """The best trial's model parameters, as its search space maps them (plus the fixed ones)."""
    return objective.params(optuna.trial.FixedTrial(study.best_trial.params, study.best_trial.number))


def tune(m: Manifest, settings: TuneSettings, out: Path, *, n_trials: int, timeout: float | None = None,
         storage: str | None = None, study_name: str | None = None, cache: Path | None = None,
         heartbeat: tuple[int, int] = (10, 30),
         on_features: Callable[[int, int], None] | None = None,
         on_trial: Callable[[TrialEvent], None] | None = None, reporter: Any = None) -> TuneResult:
    """Search ``settings.model``'s space on ``m``, then score the best and default configurations on
    the held-out test side and write the outputs (see ``write_outputs``) into ``out``."""
    from leukoscope.data.splits import check_no_leak, split_protocol
    from leukoscope.models.registry import get_model

    t0 = time.perf_counter()
    settings.check()
    if n_trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {n_trials}")
    family = get_model(settings.model).family
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = OBJECTIVES[family]
    split = holdout(kind.rows(m, settings), settings.test, settings.seed)
    check_no_leak(split)
    study = open_study(settings, storage_url(out, storage), study_name or settings.model,
                       _fingerprint(split), heartbeat=heartbeat)
    objective = kind(settings, split, out, cache=cache, on_features=on_features, reporter=reporter)
    default = objective.default_params()
    resolved = json.dumps(objective.config_file(default), sort_keys=True, default=str)
    key = f"defaults-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"  # again if the defaults change
    if key not in study.user_attrs:  # the baseline the search must beat, once per study
        value, folds = objective.score(default)
        study.set_user_attr(key, {"cv": value, "folds": folds})
    run_trials(study, objective, n_trials, timeout=timeout, on_trial=on_trial)
    counts = _counts(study)
    if not counts["complete"]:
        raise ConfigError(f"study {study.study_name!r} has no completed trial yet; run more trials")
    default_cv, default_folds = float(study.user_attrs[key]["cv"]), study.user_attrs[key]["folds"]
    gain = improvement(study.best_trial.user_attrs.get("fold_scores", []), default_folds, settings.cv)
    # the defaults are a candidate too, chosen by the same CV (never by the test side): the best trial
    # replaces them only when it beats them by more than one standard error of the paired difference
    if study.best_value > default_cv and gain["mean"] > gain["se"]:
        number, cv_value, params = study.best_trial.number, study.best_value, best_params(study, objective)
    else:
        number, cv_value, params = None, default_cv, default
    sides: dict[str, int] = {}
    for side, part in split.groupby("side"):
        sides |= {str(side): len(part), f"{side}_groups": int(part["group"].nunique())}
    # scored once each (a network's final run is a full training)
    default_test = objective.holdout_scores(default, "default")
    best_test = default_test if number is None else objective.holdout_scores(params, f"trial-{number:04d}")
    result = TuneResult(
        study=study, settings=settings, family=family, protocol=split_protocol(split),
        warning=warnings_for(split), split=sides,
        best={"trial": number, "cv": cv_value, "params": params,
              "search_best": {"trial": study.best_trial.number, "cv": study.best_value, **gain},
              "test": best_test},
        default={"params": default, "cv": default_cv, "test": default_test},
        counts=counts, config=objective.config_file(params), features=objective.features,
        skipped=list(objective.skipped), seconds=time.perf_counter() - t0)
    write_outputs(result, out)
    return result


# ---------------------------------------------------------------- outputs


def load_config(path: Path) -> dict[str, Any]:
    """A classical configuration written by ``tune`` (``model``, ``params``, ``features``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML
    except Exception as e:  # noqa: BLE001 - any parse error is a bad file
        raise ConfigError(f"{path}: cannot parse ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise ConfigError(f"{path}: expected a mapping with 'model' (a leukoscope tune best.yaml)")
    if data.get("family", "classical") != "classical" or not isinstance(data.get("params"), dict):
        raise ConfigError(f"{path}: not a classical configuration; "
                          "a network's goes to leukoscope train --config")
    return {"model": data["model"], "params": data["params"],
            "features": data.get("features", "handcrafted")}


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (surplus ones left out): number, state, value, params, timings, errors."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "value": t.value if t.state == TrialState.COMPLETE else None,
                     **{f"param_{k}": v for k, v in t.params.items()},
                     "steps": len(t.intermediate_values), "last_reported": last,
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None,
                     "fold_scores": " ".join(f"{s:.4f}" for s in t.user_attrs.get("fold_scores", [])),
                     "error": t.user_attrs.get("error", "")})
    return pd.DataFrame(rows)


def importances(study: optuna.Study, fixed: dict[str, Any]) -> dict[str, float]:
    """fANOVA importance of each searched parameter ({} until two trials with varied values complete)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({k for t in done for k in t.params if k not in fixed})
    names = [n for n in names if len({repr(t.params.get(n)) for t in done}) > 1]
    if len(done) < 2 or not names:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(
                study, params=names, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):
        return {}


def _figures(study: optuna.Study, result: TuneResult, imp: dict[str, float]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from leukoscope.reports.html import figure_to_data_uri

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    label = f"{result.settings.metric} ({result.settings.cv}-fold CV, train side)"
    figs: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ordered = sorted(done, key=lambda t: t.number)
    values = np.array([t.value for t in ordered], float)
    ax.scatter([t.number for t in ordered], values, s=18, color="#5b6bbf", label="complete")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", s=18, color="#c55",
                   label="pruned (last reported)")
    ax.step([t.number for t in ordered], np.maximum.accumulate(values), where="post",
            color="#222", label="best so far")
    ax.set(xlabel="trial", ylabel=label, title="optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figs["history"] = figure_to_data_uri(fig)

    if any(t.intermediate_values for t in trials):
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        for t in trials:
            if t.intermediate_values:
                steps = sorted(t.intermediate_values)
                ax.plot(steps, [t.intermediate_values[s] for s in steps], alpha=0.6, lw=1,
                        color="#c55" if t.state == TrialState.PRUNED else "#5b6bbf")
        unit = "fold (from 0; running mean)" if result.family == "classical" else "epoch (first fold)"
        ax.set(xlabel=unit, ylabel="reported value", title="intermediate values (red: pruned)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        figs["intermediate"] = figure_to_data_uri(fig)

    if imp:
        fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(imp) + 1.2))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="#5b6bbf")
        ax.set(xlabel="importance (fANOVA, share of variance)", title="parameter importances")
        figs["importances"] = figure_to_data_uri(fig)

    params = sorted({k for t in done for k in t.params if k not in result.settings.fixed})
    if params and done:
        cols = min(3, len(params))
        rows = math.ceil(len(params) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, sharey=True)
        for ax, name in zip(axes.flat, params, strict=False):
            pts = [(t.params[name], t.value, t.number) for t in done if name in t.params]
            xs = [p[0] for p in pts]
            numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
            x = xs if numeric else [str(v) for v in xs]
            ax.scatter(x, [p[1] for p in pts], c=[p[2] for p in pts], cmap="viridis", s=16)
            dist = done[-1].distributions.get(name)
            if numeric and getattr(dist, "log", False):
                ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(params):]:
            ax.axis("off")
        axes[0][0].set_ylabel(result.settings.metric)
        fig.suptitle("slice plots (colour: trial number)")
        fig.tight_layout()
        figs["slices"] = figure_to_data_uri(fig)
    return figs


def protocol_text(result: TuneResult) -> str:
    s, n, classical = result.settings, result.split, result.family == "classical"
    objective = ("mean fold score" if classical else
                 "pooled out-of-fold score; each fold's network early-stopped on a val side of its rest")
    fitted = ("fitted on the whole train side" if classical
              else "trained on the train side (a val part of it for early stopping)")
    cv = f"{s.cv}-fold grouped CV" + (f" repeated {s.classical_repeats}x" if classical else "")
    return (f"Objective: {s.metric} of {cv} ({objective}) on the train side only "
            f"({n['train']} images, {n['train_groups']} groups) of a grouped, stratified train/test split "
            f"(test {s.test:.0%}: {n['test']} images, {n['test_groups']} groups, seed {s.seed}). "
            f"The test side was read once, after the search, to score the best configuration and the "
            f"model's defaults, both {fitted}. Sampler: TPE; pruner: {s.pruner} on per-"
            f"{'fold' if classical else 'epoch'} values. The best trial replaces the defaults only when "
            "its paired per-fold improvement exceeds one standard error (Nadeau & Bengio's correction "
            "for overlapping training folds).")


def summary(result: TuneResult) -> dict[str, Any]:
    s = result.settings
    return {"model": s.model, "family": result.family, "study": result.study.study_name,
            "metric": s.metric, "protocol": result.protocol, "warning": result.warning,
            "protocol_text": protocol_text(result), "settings": asdict(s), "split": result.split,
            "trials": result.counts, "best": result.best, "default": result.default,
            "features": result.features, "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
            "seconds": round(result.seconds, 1), "config_file": BEST_FILE,
            "next": ("leukoscope benchmark PATH --config " if result.family == "classical"
                     else "leukoscope train PATH --config ") + BEST_FILE}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_outputs(result: TuneResult, out: Path) -> dict[str, Path]:
    """best.yaml (for train / benchmark --config), best.json, trials.csv and report.html, atomically."""
    import yaml

    from leukoscope import __version__
    from leukoscope.bundle import write_json
    from leukoscope.reports.html import write_report

    out = Path(out)
    paths = {"config": out / BEST_FILE, "summary": out / SUMMARY_FILE, "trials": out / TRIALS_FILE,
             "report": out / REPORT_FILE}
    info = summary(result)
    which = "the defaults" if result.best["trial"] is None else f"trial {result.best['trial']}"
    head = (f"# leukoscope tune: best of {result.counts['complete']} complete trials and the defaults, study "
            f"{result.study.study_name!r} ({which}, CV {result.settings.metric} "
            f"{result.best['cv']:.4f}, {result.protocol})\n# use: {info['next']}\n")
    config = json.loads(json.dumps(result.config))  # plain types for YAML
    _atomic_text(paths["config"], head + yaml.safe_dump(config, sort_keys=False))
    write_json(paths["summary"], info)
    frame = trials_frame(result.study)
    tmp = paths["trials"].with_name(f".{TRIALS_FILE}.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(paths["trials"])
    imp = importances(result.study, result.settings.fixed)
    figure_keys = ("n", "accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "roc_auc")
    write_report(paths["report"], "tune.html", title=f"Hyperparameter search: {result.settings.model}",
                 protocol=result.protocol, warning=result.warning, version=__version__, info=info,
                 figures=_figures(result.study, result, imp), importances=imp, figure_keys=figure_keys,
                 trials=frame.head(200).to_dict("records"), trial_columns=list(frame.columns))
    return paths
