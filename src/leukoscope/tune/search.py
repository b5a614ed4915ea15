"""``tune``: search a registered model's space, then score the kept configuration once.

The protocol, and why each piece is there:

- ``holdout`` makes one grouped, stratified train / test split (``train.data.protocol_split``
  with no val side, duplicates grouped by default: the same test side ``leukoscope train`` and
  ``benchmark`` hold out for the same ``test`` and seed), or takes the test side of ``--split FILE``.
  The objective (``objectives``) only ever sees train-side rows (their features or pixels); the
  test side is read once, after the search, to score the kept configuration and the model's
  defaults alike.
- The model's defaults are scored by the same CV once per study; the search's best trial replaces
  them only when it beats them by more than noise (``selection``).
- The study lives in a shared storage and resumes (``study``); the outputs are ``report``'s.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from leukoscope.data.manifest import Manifest
from leukoscope.errors import ConfigError
from leukoscope.progress import SILENT, Progress
from leukoscope.tune.objectives import OBJECTIVES
from leukoscope.tune.report import TuneResult, check_out, write_outputs
from leukoscope.tune.selection import choose
from leukoscope.tune.settings import TuneSettings, holdout
from leukoscope.tune.study import TrialEvent, fingerprint, open_study, run_trials, storage_url, trial_counts


def tune(m: Manifest, settings: TuneSettings, out: Path, *, n_trials: int, timeout: float | None = None,
         storage: str | None = None, study_name: str | None = None, cache: Path | None = None,
         heartbeat: tuple[int, int] = (10, 30), progress: Progress = SILENT,
         on_trial: Callable[[TrialEvent], None] | None = None) -> TuneResult:
    """Search ``settings.model``'s space on ``m``, then score the best and default configurations on
    the held-out test side and write the outputs (see ``write_outputs``) into ``out``, which must not
    hold another study's (``check_out``).

    ``progress`` hears of the features, the trials (notes: failures, each new best) and, for
    networks, every training run's epochs; ``on_trial`` gets each of this worker's finished trials.
    ``heartbeat``: seconds between a running trial's heartbeats, and the silence after which another
    worker fails it as dead and redoes it.
    """
    from leukoscope.data.splits import check_no_leak, split_protocol, split_warnings
    from leukoscope.models.registry import get_model

    t0 = time.perf_counter()
    settings.check()
    if n_trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {n_trials}")
    if heartbeat[0] < 1:
        raise ConfigError(f"--heartbeat must be at least 1 second, got {heartbeat[0]}")
    family = get_model(settings.model).family
    out, name = Path(out), study_name or settings.model
    url = storage_url(out, storage)
    check_out(out, name)
    out.mkdir(parents=True, exist_ok=True)
    kind = OBJECTIVES[family]
    split = holdout(kind.rows(m, settings), settings.test, settings.seed, dedupe=settings.dedupe,
                    split=settings.split, cache=cache, progress=progress)
    check_no_leak(split)
    study = open_study(settings, url, name, fingerprint(split), heartbeat=heartbeat)
    objective = kind(settings, split, out, cache=cache, progress=progress)
    default = objective.default_params()
    resolved = json.dumps(objective.config_file(default), sort_keys=True, default=str)
    key = f"defaults-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"  # again if the defaults change
    if key not in study.user_attrs:  # the baseline the search must beat, once per study
        value, folds = objective.score(default)
        study.set_user_attr(key, {"cv": value, "folds": folds})
    run_trials(study, objective, n_trials, timeout=timeout, on_trial=on_trial, progress=progress)
    counts = trial_counts(study)
    if not counts["complete"]:
        raise ConfigError(f"study {study.study_name!r} has no completed trial yet; run more trials")
    default_cv, default_folds = float(study.user_attrs[key]["cv"]), study.user_attrs[key]["folds"]
    number, cv_value, params, search_best = choose(study, objective, default, default_cv, default_folds,
                                                   settings.cv)
    sides: dict[str, int] = {}
    for side, part in split.groupby("side"):
        sides |= {str(side): len(part), f"{side}_groups": int(part["group"].nunique())}
    # scored once each (a network's final run is a full training)
    default_test = objective.holdout_scores(default, "default")
    best_test = default_test if number is None else objective.holdout_scores(params, f"trial-{number:04d}")
    result = TuneResult(
        study=study, settings=settings, family=family, protocol=split_protocol(split),
        warning=split_warnings(split), split=sides,
        best={"trial": number, "cv": cv_value, "params": params,
              "search_best": search_best, "test": best_test},
        default={"params": default, "cv": default_cv, "test": default_test},
        counts=counts, config=objective.config_file(params), features=objective.features,
        skipped=list(objective.skipped), seconds=time.perf_counter() - t0)
    write_outputs(result, out)
    return result

