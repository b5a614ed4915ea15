"""Hyperparameter search with Optuna: grouped CV on the train side only, the test side scored once.

- ``settings``: what defines a study (``TuneSettings``) and its grouped train / test split;
- ``study``: the shared, resumable study (RDB storage, heartbeats, seeded sampler) and the loop
  that runs its trials across workers;
- ``objectives``: what a trial scores (classical pipelines on cached features, or networks);
- ``selection``: when the search's best replaces the model's defaults;
- ``report``: the files a study leaves (best.yaml, best.json, trials.csv, report.html);
- ``search``: ``tune``, which runs the whole protocol (see its docstring).
"""

from leukoscope.tune.report import REPORT_FILE, TuneResult, load_config, write_outputs
from leukoscope.tune.search import tune
from leukoscope.tune.selection import best_params, improvement
from leukoscope.tune.settings import METRICS, PRUNERS, TuneSettings, holdout
from leukoscope.tune.study import TrialEvent, open_study, run_trials, storage_url

__all__ = ["METRICS", "PRUNERS", "REPORT_FILE", "TrialEvent", "TuneResult", "TuneSettings", "best_params",
           "holdout", "improvement", "load_config", "open_study", "run_trials", "storage_url", "tune",
           "write_outputs"]
