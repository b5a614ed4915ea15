"""leukoscope tune: resumable studies, parallel workers on one SQLite study and on a PostgreSQL server,
a test side the search never reads, and outputs that ``train --config`` / ``benchmark --config`` accept."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from leukoscope.cli.verbs import app
from leukoscope.data.readers import read
from leukoscope.tune import TuneSettings, holdout, improvement, load_config, storage_url, tune
from postgres_support import Postgres, postgres  # noqa: F401 - the fixture is used by name

#: A worker process running the study loop ``tune`` uses (``open_study`` + ``run_trials``) on an
#: objective that logs "pid trial-number" each time it runs and sleeps, so a trial can be killed
#: mid-way; no model or data, so a worker starts in about a second.
WORKER = '''
import os, sys, time
from pathlib import Path

from leukoscope.tune import TuneSettings, open_study, run_trials

out, log, delay, n, go = sys.argv[1:6]
study = open_study(TuneSettings(model="toy"), f"sqlite:///{out}/study.db", "toy", "data", heartbeat=(1, 2))
(Path(out) / f"ready-{os.getpid()}").touch()  # ready once the study is open: a slow open cannot miss the race
while go != "-" and not Path(go).exists():
    time.sleep(0.02)


def objective(trial):
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {trial.number}\\n")
    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(float(delay))
    return x


run_trials(study, objective, int(n), poll=0.2)
'''


def _worker(tmp: Path, out: Path, log: Path, delay: float, n: int, go: str = "-") -> subprocess.Popen:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    out.mkdir(parents=True, exist_ok=True)
    args = [str(script), str(out), str(log), str(delay), str(n), go]
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="toy", storage=storage_url(out))


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]


def _evaluated(log: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]  # type: ignore[misc]


def test_killed_study_resumes_without_repeating_finished_trials(tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "evaluated.log"
    first = _worker(tmp_path, out, log, delay=0.3, n=8)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None:
        if log.exists() and len(_evaluated(log)) >= 4:
            break  # three trials finished, the fourth is running
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()[0]
    first.send_signal(signal.SIGKILL)  # no chance to clean up: the running trial stays RUNNING
    first.wait()
    before = {t.number for t in _complete(_study(out))}
    killed = {n for _, n in _evaluated(log)} - before
    assert len(before) >= 3 and len(killed) == 1

    second = _worker(tmp_path, out, log, delay=0.0, n=8)
    # a hang guard, not a speed check: the resumed worker waits out the killed trial's heartbeat grace (30 s)
    # and starts its imports on a machine busy with the rest of the suite
    output = second.communicate(timeout=240)[0]
    assert second.returncode == 0, output
    study = _study(out)
    assert len(_complete(study)) == 8
    numbers = [n for _, n in _evaluated(log)]
    assert len(numbers) == len(set(numbers)) == 8 + 1  # 8 finished + the killed one; none twice
    states = {t.number: t.state for t in study.get_trials()}
    assert states[killed.pop()] == optuna.trial.TrialState.FAIL  # stale heartbeat: failed and replaced


def test_a_stalled_worker_whose_trial_was_failed_as_stale_goes_on(tmp_path: Path) -> None:
    """A live worker stalled past the heartbeat grace has its trial failed by another worker; when it
    wakes, Optuna refuses its result ("Cannot tell a FAIL trial"), which used to end it in a traceback."""
    from leukoscope.tune import open_study, run_trials

    study = open_study(TuneSettings(model="toy"), storage_url(tmp_path), "toy", "data", heartbeat=(1, 2))
    stalled: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        if not stalled:  # what another worker's stale check does while this one is stalled
            stalled.append(trial.number)
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        return trial.suggest_float("x", 0.0, 1.0)

    run_trials(study, objective, 3, timeout=60, poll=0.2)
    assert len(_complete(study)) == 3  # the failed trial was redone
    assert study.get_trials()[stalled[0]].state == optuna.trial.TrialState.FAIL


def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    out, log, go = tmp_path / "run", tmp_path / "evaluated.log", tmp_path / "go"
    workers = [_worker(tmp_path, out, log, delay=0.1, n=12, go=str(go)) for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(out.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()  # both start together, so they race for trials
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    done = _complete(_study(out))
    runs = _evaluated(log)
    assert len(done) == 12
    assert sorted(n for _, n in runs) == sorted(t.number for t in done)  # none lost, none run twice
    assert len({pid for pid, _ in runs}) == 2  # both workers did trials
    assert len({t.params["x"] for t in done}) == 12  # and drew different configurations


def test_interrupted_tune_reruns_only_the_missing_trials(tmp_path: Path, synthetic2: Path) -> None:
    m, out = read([synthetic2]), tmp_path / "run"
    settings = TuneSettings(model="lda", cv=3, test=0.25)
    seen: list[int] = []

    def stop_after_three(ev) -> None:  # noqa: ANN001 - a TrialEvent
        seen.append(ev.number)
        if len(seen) == 3:
            raise KeyboardInterrupt  # Ctrl-C between trials

    with pytest.raises(KeyboardInterrupt):
        tune(m, settings, out, n_trials=7, on_trial=stop_after_three)
    assert not (out / "best.yaml").exists()
    again: list[int] = []
    result = tune(m, settings, out, n_trials=7, on_trial=lambda ev: again.append(ev.number))
    assert seen == [0, 1, 2] and again == [3, 4, 5, 6]
    assert result.counts["complete"] + result.counts["pruned"] == 7 and (out / "best.yaml").exists()


def _poison(root: Path, test_paths: list[str]) -> None:
    """Corrupt half of the test images; give the others the pixels of a cell of another class."""
    donors = {lab: sorted((root / lab).glob("*.png")) for lab in ("blast", "normal")}
    for i, p in enumerate(sorted(test_paths)):
        path = Path(p)
        if i % 2:
            path.write_bytes(f"not an image ({i})".encode())  # distinct bytes: no deduplication
        else:
            other = "normal" if path.parent.name == "blast" else "blast"
            donor = next(d for d in donors[other] if str(d) not in test_paths)
            shutil.copyfile(donor, path)


def test_objective_never_reads_the_test_side(tmp_path: Path, synthetic2: Path) -> None:
    # the poison copies cells across sides on purpose: grouping copies (dedupe) would move the split
    settings = TuneSettings(model="logistic_regression", cv=3, test=0.25, pruner="none", dedupe=False)
    results = {}
    for name in ("clean", "poisoned"):
        root = tmp_path / name / "cells"
        shutil.copytree(synthetic2, root)
        m = read([root])
        if name == "poisoned":
            split = holdout(m, settings.test, settings.seed, dedupe=False)
            _poison(root, list(split.loc[split["side"] == "test", "path"]))
        results[name] = tune(read([root]), settings, tmp_path / name / "out", n_trials=4)
    clean, poisoned = results["clean"], results["poisoned"]
    values = {k: [t.value for t in r.study.get_trials()] for k, r in results.items()}
    assert values["clean"] == values["poisoned"]  # same trials, same scores: test rows unused
    assert clean.default["cv"] == poisoned.default["cv"] and clean.best["cv"] == poisoned.best["cv"]
    # ... while the final scoring did read them: corrupt files skipped, swapped cells misjudged
    assert len(poisoned.skipped) == poisoned.split["test"] // 2 and not clean.skipped
    assert poisoned.best["test"]["accuracy"] < clean.best["test"]["accuracy"]


def test_cli_tune_classical_outputs_feed_benchmark(tmp_path: Path, synthetic4: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tune"
    args = ["tune", str(synthetic4), "--model", "knn", "--trials", "6", "--out", str(out), "--cv", "3",
            "--fix", "n_neighbors=5"]
    res = runner.invoke(app, [*args, "--metric", "macro_f1"])
    assert res.exit_code == 0, res.output
    assert "held-out test side" in res.output and "defaults" in res.output
    cfg, summary = load_config(out / "best.yaml"), yaml.safe_load((out / "best.json").read_text())
    assert cfg["model"] == "knn" and cfg["params"] == summary["best"]["params"]
    assert cfg["params"]["n_neighbors"] == 5  # fixed, whether a trial or the defaults won
    assert summary["best"]["trial"] is None or cfg["params"]["weights"] in ("uniform", "distance")
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 6
    assert summary["best"]["cv"] >= summary["default"]["cv"]  # defaults are a candidate
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "train side only" in html and "SYNTHETIC data" in html
    # rerun: the finished study is reused, no new trial
    trials = len(optuna.load_study(study_name="knn", storage=storage_url(out)).trials)
    again = runner.invoke(app, [*args, "--metric", "macro_f1"])
    assert again.exit_code == 0, again.output
    assert len(optuna.load_study(study_name="knn", storage=storage_url(out)).trials) == trials
    # another metric on the same study is refused, naming the setting
    clash = runner.invoke(app, args)
    assert clash.exit_code == 1 and "metric" in clash.output
    bench = runner.invoke(app, ["benchmark", str(synthetic4), "--config", str(out / "best.yaml"),
                                "--out", str(tmp_path / "bench"), "--cv", "3"])
    assert bench.exit_code == 0, bench.output
    assert "knn" in (tmp_path / "bench" / "leaderboard.csv").read_text()


def test_classical_objective_averages_repeated_cv(tmp_path: Path, synthetic2: Path) -> None:
    settings = TuneSettings(model="lda", cv=3, test=0.25, repeats=2, pruner="none")
    result = tune(read([synthetic2]), settings, tmp_path / "run", n_trials=2)
    for t in result.study.get_trials():
        folds = t.user_attrs["fold_scores"]
        assert len(folds) == 6 and sorted(t.intermediate_values) == list(range(6))
        assert np.isclose(t.value, np.mean(folds))
    assert "repeated 2x" in (tmp_path / "run" / "report.html").read_text()


def test_improvement_is_paired_with_the_corrected_standard_error() -> None:
    # d = [0, .1, 0, -.1]: mean 0, sample variance .02 / 3, times 1/4 + 1/(5 - 1)
    gain = improvement([0.9, 1.0, 0.95, 0.85], [0.9, 0.9, 0.95, 0.95], k=5)
    assert np.isclose(gain["mean"], 0.0) and np.isclose(gain["se"], np.sqrt(0.02 / 3 * 0.5))
    assert improvement([0.9, 0.8], [0.7], k=5) == {"mean": pytest.approx(0.15), "se": 0.0}  # unpaired


@pytest.mark.parametrize("args, message", [
    (["--metric", "auc"], "--metric"),
    (["--repeats", "0"], "--repeats"),
    (["--model", "leukonet", "--repeats", "2"], "--repeats is for classical models"),
    (["--pruner", "magic"], "--pruner"),
    (["--fix", "nonsense"], "NAME=VALUE"),
    (["--fix", "no_such_param=3"], "bad parameters"),
    (["--model", "nope"], "unknown model"),
    (["--storage", "nosuchdb://x"], "--storage"),
    (["--heartbeat", "0"], "--heartbeat"),
    (["--storage", "postgresql://nobody@/nodb?host=/nonexistent"], "--storage postgresql+psycopg://"),
])
def test_cli_tune_bad_settings_are_one_line_errors(tmp_path: Path, synthetic2: Path, args: list[str],
                                                  message: str) -> None:
    base = ["tune", str(synthetic2), "--model", "lda", "--trials", "2", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, base + args)
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output


@pytest.mark.slow  # nine tiny trainings: defaults CV, two trials of 2 folds, two finals, the retrain
def test_network_study_reports_epochs_and_its_best_config_retrains(tmp_path: Path, synthetic2: Path) -> None:
    out = tmp_path / "cnn"
    runner = CliRunner()
    res = runner.invoke(app, ["tune", str(synthetic2), "--model", "leukonet", "--trials", "2",
                              "--out", str(out), "--cv", "2", "--test", "0.25", "--fix", "img_size=64",
                              "--fix", "epochs=2", "--fix", "batch_size=16", "--fix", "patience=2"])
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="leukonet", storage=storage_url(out))
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # epochs of the first fold
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"] == "leukonet" and best["img_size"] == 64 and best["epochs"] == 2 and best["cv"] == 0
    assert not list((out / "trials").rglob("*.safetensors"))  # trial weights are not kept
    run = runner.invoke(app, ["train", str(synthetic2), "--config", str(out / "best.yaml"),
                              "--out", str(tmp_path / "retrain")])
    assert run.exit_code == 0, run.output
    summary = yaml.safe_load((out / "best.json").read_text())
    retrained = yaml.safe_load((tmp_path / "retrain" / "metrics.json").read_text())["test"]
    final = summary["best"]["test"]
    assert retrained["n"] == final["n"] == summary["split"]["test"]  # the same held-out side
    assert np.isclose(retrained["balanced_accuracy"], final["balanced_accuracy"])  # same seed, same run


def test_parse_of_fixed_values() -> None:
    from leukoscope.cli.tune import parse_fixed

    assert parse_fixed(["lr=1e-3", "img-size=64", "weights=distance", "augment=false"]) == {
        "lr": 1e-3, "img_size": 64, "weights": "distance", "augment": False}


def test_benchmark_config_refuses_a_network_configuration(tmp_path: Path) -> None:
    from leukoscope.errors import ConfigError

    f = tmp_path / "best.yaml"
    f.write_text(yaml.safe_dump({"model": "leukonet", "lr": 1e-3, "epochs": 4}))
    with pytest.raises(ConfigError, match="leukoscope train --config"):
        load_config(f)
    f.write_text("model: svc\nfamily: classical\nfeatures: handcrafted\nparams: {C: 3.0}\n")
    assert load_config(f) == {"model": "svc", "params": {"C": 3.0}, "features": "handcrafted"}


def test_benchmark_config_names_a_bad_features_setting(tmp_path: Path, synthetic2: Path) -> None:
    from leukoscope.errors import ConfigError

    f = tmp_path / "best.yaml"
    f.write_text("model: svc\nparams: {C: 3.0}\nfeatures: nosuch\n")
    with pytest.raises(ConfigError, match=r"best\.yaml: features must be one of .*, got 'nosuch'"):
        load_config(f)
    f.write_bytes(b"model: svc\n\xff: 1\n")
    with pytest.raises(ConfigError, match=r"best\.yaml: cannot parse"):
        load_config(f)
    f.write_text("model: svc\nparams: {C: 3.0}\nfeatures: [x]\n")
    res = CliRunner().invoke(app, ["benchmark", str(synthetic2), "--out", str(tmp_path / "b"),
                                   "--config", str(f)])
    assert res.exit_code == 1 and "best.yaml: features" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("name", ["t?x", "t%20z", "t#y"], ids=["query", "escape", "fragment"])
def test_the_sqlite_study_lives_in_out_whatever_its_name(tmp_path: Path, name: str) -> None:
    """The folder's name is taken literally, not as a URL's query, escape or fragment: no file beside
    it, and no study shared with another folder of the same prefix."""
    from leukoscope.tune.study import open_study, shown_url

    out = tmp_path / name
    url = storage_url(out)
    open_study(TuneSettings(model="toy"), url, "toy", "data")
    assert [p.name for p in tmp_path.iterdir()] == [name] and (out / "study.db").is_file()
    assert shown_url(url) == f"sqlite:///{out.resolve() / 'study.db'}"  # as it is on disk


def test_an_explicit_sqlite_storage_is_read_as_a_url(tmp_path: Path) -> None:
    """A --storage URL the user typed is used as typed (``%20`` is a space), its folder made to match."""
    from leukoscope.tune.study import open_study

    url = f"sqlite:///{tmp_path}/new%20dir/s.db"
    assert storage_url(tmp_path / "out", url) == url
    open_study(TuneSettings(model="toy"), url, "toy", "data")
    assert (tmp_path / "new dir" / "s.db").is_file() and not (tmp_path / "new%20dir").exists()


def test_a_trial_killed_before_its_first_heartbeat_is_failed_and_redone(tmp_path: Path) -> None:
    """A worker killed between creating a trial and its first heartbeat left a RUNNING trial with no
    heartbeat, which Optuna never fails as stale: every other worker then waited for it forever."""
    from leukoscope.tune import open_study, run_trials

    study = open_study(TuneSettings(model="toy"), storage_url(tmp_path), "toy", "data", heartbeat=(1, 2))
    orphan = study.ask()  # RUNNING, no heartbeat, and no worker will ever finish it
    started = time.monotonic()
    run_trials(study, lambda t: t.suggest_float("x", 0.0, 1.0), 2, timeout=60, poll=0.2)
    assert len(_complete(study)) == 2, "the worker waited for the orphan instead of redoing it"
    assert study.get_trials()[orphan.number].state == optuna.trial.TrialState.FAIL
    assert time.monotonic() - started < 30


def _tune_process(data: Path, out: Path, storage: str, n: int) -> subprocess.Popen:
    """``leukoscope tune`` as each machine of a shared study runs it (its own --out, the same --storage):
    logistic regression on the 52 real C-NMC training cells, trials of about half a second."""
    cli = shutil.which("leukoscope", path=str(Path(sys.executable).parent)) or "leukoscope"
    args = ["tune", str(data / "cnmc_sample"), "--model", "logistic_regression", "--trials", str(n),
            "--out", str(out), "--storage", storage, "--study", "shared", "--cv", "3", "--repeats", "1",
            "--pruner", "none", "--heartbeat", "1"]
    return subprocess.Popen([cli, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _made_study(url: str, name: str) -> optuna.Study | None:
    """The study once a worker has made it, else None; looks without making the tables itself (as
    ``load_study`` would), so the workers' own race to make them is what the test runs."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": name}).one()
    except (sa.exc.ProgrammingError, sa.exc.NoResultFound):
        return None
    finally:
        engine.dispose()
    return optuna.load_study(study_name=name, storage=url)


def _running_trial_of(study: optuna.Study, worker: subprocess.Popen) -> int | None:
    """The trial ``worker`` is in the middle of, caught by freezing it (SIGSTOP) so it cannot finish
    the trial between the look and the kill; None (and the worker resumed) when it is between trials."""
    os.kill(worker.pid, signal.SIGSTOP)
    mine = [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if t.user_attrs.get("worker", "").endswith(f":{worker.pid}")]
    if not mine:
        os.kill(worker.pid, signal.SIGCONT)
    return mine[0] if mine else None


def test_two_machines_share_a_postgresql_study(tmp_path: Path, data: Path, postgres: Postgres) -> None:  # noqa: F811
    """Two ``leukoscope tune`` processes on one study in a real PostgreSQL server, through the URL a user
    types: they split the trials, and when one is killed mid-trial, the other fails that trial once its
    heartbeat stops (stale after 3 s) and runs a replacement, so the study still finishes ``n`` trials."""
    postgres.createdb("tuning")
    # trials take a few tenths of a second: enough of them that, on a loaded machine, the study is not over
    # before the loop below has seen both workers finish one and caught one mid-trial
    url, n = postgres.url("tuning"), 40
    workers = [_tune_process(data, tmp_path / f"machine-{i}", url, n) for i in (1, 2)]
    try:
        study, killed, victim = None, None, None
        deadline = time.monotonic() + 240  # a hang guard: both start, extract features and score the defaults
        while killed is None and time.monotonic() < deadline and all(w.poll() is None for w in workers):
            time.sleep(0.5 if study is None else 0.05)
            if study is None:
                study = _made_study(storage_url(tmp_path, url), "shared")
                continue
            done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            if not all(any(t.user_attrs["worker"].endswith(f":{w.pid}") for t in done) for w in workers):
                continue  # kill only once both have finished trials of the study
            for w in workers:
                killed = _running_trial_of(study, w)
                if killed is not None:
                    w.send_signal(signal.SIGKILL)
                    w.wait()
                    victim = w
                    break
        outputs = {w.pid: w.communicate(timeout=240)[0] for w in workers if w is not victim}
        assert victim is not None and killed is not None, f"no worker caught mid-trial: {outputs}"
        (survivor,) = (w for w in workers if w is not victim)
        assert survivor.returncode == 0, outputs
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    trials = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    by = {w.pid: [t.number for t in done if t.user_attrs["worker"].endswith(f":{w.pid}")] for w in workers}
    assert len(done) == n and all(by.values()), by  # both workers ran trials of the one study
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [killed] and "error" not in failed[0].user_attrs  # by heartbeat
    assert max(by[survivor.pid]) > killed  # redone by the survivor after the kill
    csv = pd.read_csv(tmp_path / f"machine-{workers.index(survivor) + 1}" / "trials.csv")
    row = csv.loc[csv["number"] == killed].iloc[0]
    assert row["state"] == "fail" and row["worker"].endswith(f":{victim.pid}")
    assert sorted(csv.loc[csv["state"] == "complete", "number"]) == sorted(t.number for t in done)


def _open_at_once(start: Any, url: str) -> str:
    """A worker of the race below: wait for the others, then open the study (its error as text)."""
    from leukoscope.errors import ConfigError
    from leukoscope.tune import open_study

    start.wait()
    try:
        return open_study(TuneSettings(model="toy"), url, "shared", "data").study_name
    except ConfigError as e:
        return str(e)


def test_workers_opening_a_fresh_postgresql_database_together_all_get_the_study(
    postgres: Postgres,  # noqa: F811
) -> None:
    """Workers started at once on an empty database race to make Optuna's tables; the losers' CREATEs fail
    (DuplicateTable, a unique violation) and must retry, not stop with "cannot open". Six processes at a
    time, lined up on a barrier, on three fresh databases."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for db in ("race0", "race1", "race2"):
        postgres.createdb(db)
        start = ctx.Manager().Barrier(6)
        with ctx.Pool(6) as pool:
            assert pool.starmap(_open_at_once, [(start, postgres.url(db))] * 6) == ["shared"] * 6
