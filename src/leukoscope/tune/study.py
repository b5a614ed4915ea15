"""Studies in an RDB storage with heartbeats, and the loop that runs a study's trials.

Studies live in an RDB storage (SQLite in the output folder unless ``storage`` is given) with
heartbeats: a killed run resumes where it stopped, and several processes (or machines, with a
PostgreSQL server) can work on one study; each trial records the worker (host:pid) that ran it.
Finished trials (complete or pruned) count towards ``n_trials``; the storage numbers trials
atomically, and a trial that finds ``n_trials`` others already claimed before it is dropped unrun,
so parallel workers finish exactly ``n_trials``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from leukoscope.errors import ConfigError, LeukoscopeError
from leukoscope.progress import SILENT, Progress
from leukoscope.tune.settings import PRUNERS, TuneSettings

if TYPE_CHECKING:
    from leukoscope.data.splits import Split

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CLAIMED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
#: Consecutive failed trials (exceptions in a model) after which a worker gives up.
MAX_FAILURES = 3


#: What a user types for a PostgreSQL study, and the driver the ``tune`` extra installs (psycopg 3);
#: SQLAlchemy before 2.1 would read a bare ``postgresql://`` as psycopg2, which is not installed.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POSTGRES_DRIVER = "postgresql+psycopg://"


def storage_url(out: Path, storage: str | None = None) -> str:
    """``storage`` (a PostgreSQL URL pointed at the installed driver), else an SQLite file in ``out``,
    its path escaped so that any folder name (``?``, ``%``, ``#``) is taken literally. An in-memory
    SQLite database is refused: each connection sees its own (Optuna's heartbeat thread finds no
    tables), and a study there could neither resume nor be shared."""
    if storage is None:
        from sqlalchemy.engine import URL

        path = (Path(out) / "study.db").resolve()
        return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)
    if _sqlite_database(storage) in ("", ":memory:"):
        raise ConfigError(f"--storage {storage!r} is an in-memory SQLite database: a study there can neither "
                          "resume nor be shared; give a file, e.g. sqlite:///study.db")
    for scheme in POSTGRES_SCHEMES:
        if storage.startswith(scheme):
            return POSTGRES_DRIVER + storage[len(scheme):]
    return storage


def shown_url(url: str) -> str:
    """``url`` fit for a message: any password masked, an SQLite file's path unescaped (as it is on disk)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if (file := _sqlite_file(url)) is not None:
        return f"sqlite:///{file}"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_database(url: str) -> str | None:
    """The database an SQLite URL names (``""`` or ``":memory:"`` in memory); None for another
    database or a bad URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    return (parsed.database or "") if parsed.get_backend_name() == "sqlite" else None


def _sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL names (None for another database, an in-memory one or a bad URL)."""
    database = _sqlite_database(url)
    return Path(database) if database and database != ":memory:" else None


def _reason(e: Exception) -> str:
    """A database error in one line: the driver's own message, without SQLAlchemy's wrapping."""
    cause = getattr(e, "orig", None) or e
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"


def fingerprint(split: Split) -> str:
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
        file = _sqlite_file(url)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # workers wait for each other's writes
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.PartialFixedSampler(settings.fixed, TrialSeededSampler(settings.seed))
        for attempt in range(5):
            try:
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, grace_period=heartbeat[1],
                                                     heartbeat_interval=heartbeat[0])
                break
            # workers starting together race to make the tables: the loser's CREATE fails (PostgreSQL:
            # DuplicateTable, a ProgrammingError, or a unique violation in its catalogue)
            except (IntegrityError, OperationalError, ProgrammingError) as e:
                if attempt == 4:  # no race: a server down, a database or role that does not exist
                    raise ConfigError(f"--storage {shown_url(url)}: cannot open ({_reason(e)})") from None
                time.sleep(0.2 * (attempt + 1))
            except Exception as e:  # bad URL, missing driver
                raise ConfigError(f"--storage {shown_url(url)}: cannot open ({_reason(e)})") from None
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                pruner=PRUNERS[settings.pruner](), load_if_exists=True)
    mine = {"settings": json.loads(json.dumps(asdict(settings))), "data": data}
    theirs = {k: study.user_attrs.get(k) for k in mine}
    if theirs["settings"] is None:  # "settings" last: a worker that sees them sees the data too
        for k in ("data", "settings"):
            study.set_user_attr(k, mine[k])
    elif theirs != mine:
        diff = [k for k in mine["settings"] if mine["settings"][k] != theirs["settings"].get(k)]
        what = f"settings {', '.join(diff)}" if diff else "data"
        raise ConfigError(f"study {name!r} in {shown_url(url)} was made with other {what}; "
                          "use another --study or --out, or the same settings")
    return study


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


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials of each state (``complete``, ``pruned``, ``running``, ...), surplus ones left out."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    return {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}


def _best_value(study: optuna.Study) -> float | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(t.value for t in done) if done else None  # type: ignore[type-var]


def run_trials(study: optuna.Study, objective: Callable[[Trial], float], n_trials: int, *,
               timeout: float | None = None, poll: float = 1.0,
               on_trial: Callable[[TrialEvent], None] | None = None, progress: Progress = SILENT) -> None:
    """Run trials until ``n_trials`` of the study are finished (by any worker) or ``timeout`` s pass.

    A worker waits for other workers' running trials rather than starting more than needed; a
    running trial whose worker died is failed once its heartbeat is stale, and then redone.
    ``progress`` counts the study's finished trials and notes failures and each new best.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    worker = f"{socket.gethostname()}:{os.getpid()}"
    failures: list[str] = []
    task = f"{study.study_name}: trials"
    advance, shown = progress.task(task, n_trials), 0  # the study's finished trials, all workers

    def guarded(trial: Trial) -> float:
        _first_heartbeat(study, trial)
        claimed = study.get_trials(deepcopy=False, states=CLAIMED)
        if sum(t.number < trial.number for t in claimed) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus
        trial.set_user_attr("worker", worker)  # which machine and process ran it (trials.csv)
        try:
            return objective(trial)
        except (optuna.TrialPruned, LeukoscopeError):
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise _TrialFailed(str(e)) from e

    def callback(study: optuna.Study, t: FrozenTrial) -> None:
        nonlocal shown
        if t.user_attrs.get("surplus"):
            return
        error = t.user_attrs.get("error")
        failures[:] = [*failures, error] if error else []
        counts = trial_counts(study)
        finished, best = counts["complete"] + counts["pruned"], _best_value(study)
        advance(finished - shown)
        shown = finished
        if error:
            progress.note(f"trial {t.number} failed: {error}")
        elif t.state == TrialState.COMPLETE and t.value == best:
            progress.note(f"trial {t.number}: {t.value:.4f}, the best so far")
        if on_trial:
            on_trial(TrialEvent(t.number, t.state.name.lower(), t.value, finished, n_trials, best, error))

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        _fail_silent_trials(study)
        counts = trial_counts(study)
        finished, active = counts["complete"] + counts["pruned"], counts["running"] + counts["waiting"]
        advance(finished - shown)
        shown = finished
        if finished >= n_trials or (deadline is not None and time.monotonic() >= deadline):
            progress.done(task)
            return
        if finished + active >= n_trials:  # the rest are running elsewhere
            time.sleep(poll)
            continue
        try:
            study.optimize(guarded, n_trials=1, catch=(_Surplus, _TrialFailed), callbacks=[callback])
        except ValueError:
            # Optuna refuses to record a result for a trial another worker already failed as stale
            # (this worker stalled past the heartbeat grace): drop the result and go on
            stale = _stale_trial_of(study, worker)
            if stale is None:
                raise
            progress.note(f"trial {stale} was failed as stale by another worker while this one ran it; "
                          "its result is dropped and the trial redone")
        if len(failures) >= MAX_FAILURES:
            raise ConfigError(f"{len(failures)} trials in a row failed; last error: {failures[-1]}")


def _stale_trial_of(study: optuna.Study, worker: str) -> int | None:
    """The number of this worker's newest trial when it ended FAIL with no error of its own (failed as
    stale by another worker), else None."""
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == worker]
    last = max(mine, key=lambda t: t.number, default=None)
    if last is not None and last.state == TrialState.FAIL and "error" not in last.user_attrs:
        return last.number
    return None


def _heartbeat_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDB storage when it records heartbeats (Optuna wraps it in a cache), else None."""
    storage = getattr(study._storage, "_backend", study._storage)
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
        return storage
    return None


def _fail_silent_trials(study: optuna.Study) -> None:
    """Fail RUNNING trials that never recorded a heartbeat and started well over a grace period ago.

    Optuna's ``fail_stale_trials`` skips a trial with no heartbeat at all; one is left when a worker
    dies between creating a trial and its first heartbeat (``_first_heartbeat`` narrows that window but
    cannot close it), and every other worker would wait for it forever. Heartbeat rows are only
    reachable through the storage's private models, as in Optuna's own stale check.
    """
    from datetime import datetime

    storage = _heartbeat_storage(study)
    if storage is None:
        return
    interval = storage.get_heartbeat_interval()
    assert interval is not None
    # a live trial beats within moments of starting, but a loaded machine can stall it for a few
    # seconds: wait well past the stale grace (and 10 heartbeats) before calling a silent trial dead
    allowance = max(storage.grace_period or 2 * interval, 10 * interval)
    now = datetime.now()
    old = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > allowance]
    if not old:
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    ids = [t._trial_id for t in old]
    with _create_scoped_session(storage.scoped_session) as session:
        beating = {h.trial_id for h in session.query(models.TrialHeartbeatModel)
                   .filter(models.TrialHeartbeatModel.trial_id.in_(ids))}
    for trial_id in set(ids) - beating:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def _first_heartbeat(study: optuna.Study, trial: Trial) -> None:
    """Record a trial's first heartbeat before its objective runs.

    Optuna records heartbeats from a thread that may not have run yet when a worker is killed; a
    RUNNING trial with no heartbeat at all is never failed as stale, and every other worker would
    wait for it forever (seen: a resumed study hanging under load). Optuna's own optimise loop uses
    the same private handles (``study._storage``, ``trial._trial_id``).
    """
    from sqlalchemy.exc import OperationalError

    storage = _heartbeat_storage(study)
    if storage is not None:
        # a busy SQLite file ("database is locked") must not crash the worker: Optuna's heartbeat thread
        # beats a moment later, and ``_fail_silent_trials`` covers a trial that never beats at all
        with contextlib.suppress(OperationalError):
            storage.record_heartbeat(trial._trial_id)
