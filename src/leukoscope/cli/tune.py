"""``leukoscope tune``: Optuna search of a registered model's space, resumable, shareable by workers."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import app, console, print_skipped, read_data, say
from leukoscope.cli.options import DedupeOpt, LayoutOpt, Paths, SplitFileOpt
from leukoscope.cli.progress import shown


def parse_fixed(items: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs; values read as YAML scalars (``64`` -> int, ``1e-3`` -> float)."""
    import yaml

    from leukoscope.errors import ConfigError

    fixed: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--fix {item!r}: expected NAME=VALUE")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # yaml reads 1e-3 as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        fixed[name.strip().replace("-", "_")] = parsed
    return fixed


@app.command("tune")
def tune_cmd(
    paths: Paths,
    model: Annotated[str, typer.Option("--model", help="The model to tune: "
                                       "{classical_models}, {network_models}.")],
    out: Annotated[Path, typer.Option("--out", help="Folder: study.db, best.yaml, trials.csv, report.html.")],
    trials: Annotated[int, typer.Option("--trials", help="Finished trials wanted in the study (all "
                                        "workers together; finished ones from earlier runs count).")] = 40,
    timeout: Annotated[float | None, typer.Option(help="Start no trial after this many seconds.",
                                                  show_default="no limit")] = None,
    storage: Annotated[str | None, typer.Option(help="SQLAlchemy URL shared by several workers.",
                                                show_default="sqlite:///OUT/study.db")] = None,
    heartbeat: Annotated[int, typer.Option(
        "--heartbeat", help="Seconds between a running trial's heartbeats; a trial silent for three "
        "times as long (its worker killed, its machine gone) is failed and redone by another worker.")
                         ] = 10,
    study: Annotated[str | None, typer.Option("--study", help="Study name.", show_default="the model")
                     ] = None,
    metric: Annotated[str, typer.Option(help="What the search maximises: {tune_metrics}.")
                      ] = "balanced_accuracy",
    features: Annotated[str, typer.Option("--features", help="Classical models' feature kind: "
                                          "{feature_kinds}.")] = "handcrafted",
    cv: Annotated[int, typer.Option("--cv", help="Grouped folds of the train side.")] = 5,
    repeats: Annotated[int | None, typer.Option(
        "--repeats", help="Classical models: repeat the K-fold CV on new shufflings.",
        show_default="3; networks: 1")] = None,
    test: Annotated[float, typer.Option("--test", help="Held-out test fraction (grouped; the test side "
                                        "train and benchmark hold out for the same fraction and seed).")
                    ] = 0.15,
    pruner: Annotated[str, typer.Option(help="How trials are stopped early: {pruners}.")] = "median",
    fix: Annotated[list[str] | None, typer.Option(
        "--fix", help="NAME=VALUE: pin a parameter of the space, or set another model / training "
        "setting (repeatable), e.g. --fix img_size=64 --fix epochs=4.", show_default="none")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Split, folds and sampler seed.")] = 0,
    layout: LayoutOpt = None,
    split: SplitFileOpt = None,
    dedupe: DedupeOpt = None,
) -> None:
    """Search hyperparameters on grouped CV of the train side; score the best once on the test side."""
    import optuna

    from leukoscope.tune import REPORT_FILE, TuneSettings, tune

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the progress bars say it, once
    settings = TuneSettings(model=model, metric=metric, features=features, cv=cv, test=test, seed=seed,
                            pruner=pruner, fixed=parse_fixed(fix or []), repeats=repeats,
                            dedupe=dedupe is not False, split=None if split is None else str(split.resolve()))
    settings.check()
    m = read_data(paths, layout)
    with shown() as bars:
        result = tune(m, settings, out, n_trials=trials, timeout=timeout, storage=storage, study_name=study,
                      heartbeat=(heartbeat, 3 * heartbeat), progress=bars)
    c = result.counts
    console.print(f"study {escape(result.study.study_name)}: {c['complete']} complete, {c['pruned']} pruned, "
                  f"{c['fail']} failed trials ({result.seconds:.0f} s in this run)")
    table = Table(title=f"held-out test side ({result.split['test']} images, {result.protocol}), scored once")
    for col in ("configuration", f"CV {metric} (train side)", "balanced acc.", "weighted F1", "macro F1",
                "accuracy"):
        table.add_column(col, justify="right")
    trial = result.best["trial"]
    for name, row in ((f"best ({'the defaults' if trial is None else f'trial {trial}'})", result.best),
                      ("defaults", result.default)):
        t = row["test"]
        table.add_row(name, f"{row['cv']:.4f}",
                      *(f"{t[k]:.4f}" for k in ("balanced_accuracy", "f1_weighted", "f1_macro", "accuracy")))
    console.print(table)
    top = result.best["search_best"]
    if trial is None and top["cv"] > result.default["cv"]:
        console.print(f"kept the defaults: the search's best, trial {top['trial']} (CV {top['cv']:.4f}), "
                      f"beat them by {top['mean']:+.4f} per fold, within one standard error "
                      f"({top['se']:.4f}): noise")
    best = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best["params"].items())
    console.print("best parameters: " + escape(", ".join(best)))
    if result.warning:
        console.print(f"[yellow]note:[/] {result.warning}")
    print_skipped(result.skipped)
    nxt = "benchmark" if result.family == "classical" else "train"
    say(f"wrote {out / 'best.yaml'} (leukoscope {nxt} PATH --config {out / 'best.yaml'}), "
        f"{out / 'trials.csv'}, {out / REPORT_FILE}")
