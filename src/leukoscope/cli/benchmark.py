"""``leukoscope benchmark``: the classical leaderboard over grouped cross-validation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import app, console, print_rare, print_skipped, read_data, say
from leukoscope.cli.classmap import mapped
from leukoscope.cli.options import (
    ClassMapOpt,
    DedupeOpt,
    KindOpt,
    LayoutOpt,
    MinCellsOpt,
    Paths,
    RareOpt,
    SplitFileOpt,
)
from leukoscope.cli.progress import shown


@app.command("benchmark")
def benchmark_cmd(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Folder for leaderboard.csv / .md / .html.")],
    features: KindOpt = "handcrafted",
    cv: Annotated[int, typer.Option("--cv", help="Number of folds (capped by the groups).")] = 5,
    models: Annotated[str | None, typer.Option(
        "--models", help="Comma-separated names or globs of classical models: {classical_models}.",
        show_default="all")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per model (its whole CV).")] = 300.0,
    jobs: Annotated[int | None, typer.Option(help="Models run side by side.", show_default="one per core")
                    ] = None,
    save_best: Annotated[Path | None, typer.Option(
        "--save-best", help="Refit the winner on the train side, calibrate on val, score the held-out "
        "test side once, write a bundle here.", show_default="no bundle")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (folds and models).")] = 0,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A tuned configuration (leukoscope tune's best.yaml): that model, its parameters "
        "and its feature kind.", show_default="none")] = None,
    layout: LayoutOpt = None,
    min_cells: MinCellsOpt = None,
    rare: RareOpt = None,
    split: SplitFileOpt = None,
    dedupe: DedupeOpt = None,
    class_map: ClassMapOpt = None,
) -> None:
    """Every classical model on cached features: grouped k-fold CV of the train and val sides (the test
    side, the one train and tune hold out, is kept for --save-best), sorted by balanced accuracy."""
    from leukoscope.crossval import METRICS
    from leukoscope.errors import ConfigError
    from leukoscope.leaderboard import benchmark, cell, write_leaderboard
    from leukoscope.leaderboard import save_best as save_best_bundle
    from leukoscope.models.registry import list_models

    if cv < 2:
        raise ConfigError(f"--cv must be at least 2, got {cv}")
    names, params = None, None
    if config:
        from leukoscope.tune import load_config

        tuned = load_config(config)
        if features not in ("handcrafted", tuned["features"]):
            raise ConfigError(f"--features {features} conflicts with {config}: tuned on {tuned['features']}")
        names, params, features = [tuned["model"]], {tuned["model"]: tuned["params"]}, tuned["features"]
    elif models:
        names = []
        for pattern in (p.strip() for p in models.split(",") if p.strip()):
            found = list_models(pattern, family="classical")
            if not found:
                raise ConfigError(f"--models: no classical model matches {pattern!r}; choose from: "
                                  f"{', '.join(list_models(family='classical'))}")
            names += [n for n in found if n not in names]
    m, cmap, counts = mapped(read_data(paths, layout, mapped=class_map is not None), class_map)
    with shown() as bars:
        lb, split, X = benchmark(m, features=features, k=cv, models=names, timeout=timeout, jobs=jobs,
                                 seed=seed, params=params, min_cells=min_cells, rare=rare, split_file=split,
                                 dedupe=dedupe is not False, progress=bars)
    lb.class_map = counts
    written = write_leaderboard(lb, out)
    table = Table(title=escape(f"leaderboard: {lb.where}, {lb.protocol} ({lb.n_groups} groups; "
                               f"{lb.features['kind']} features)"))
    table.add_column("Model")
    for title in METRICS.values():
        table.add_column(title, justify="right")
    table.add_column("Status")
    for _, row in lb.table.iterrows():
        status = "ok" if row["status"] == "ok" else f"[red]{row['status']}: {escape(row['error'])}[/]"
        table.add_row(escape(row["model"]), *(cell(row, k) for k in METRICS), status)
    console.print(table)
    print_rare(lb.rare)
    if lb.shortcut:
        from leukoscope.evaluate.shortcut import leaderboard_line

        style = "yellow" if lb.shortcut["warning"] else None
        console.print(escape(leaderboard_line(lb.shortcut)), style=style)
    if lb.warning:
        console.print(f"[yellow]note:[/] {lb.warning}")
    print_skipped(lb.skipped)
    say(f"wrote {', '.join(str(p) for p in written.values())}")
    if save_best:
        bundle = save_best_bundle(lb, split, X, save_best, class_map=cmap.to_json() if cmap else None)
        from leukoscope.bundle import load_bundle

        figs = load_bundle(bundle).metrics()
        sides = figs.get("sides", {})
        shown_sides = "; ".join(f"{side} side ({sides.get(side, '?')} images) balanced accuracy "
                                f"{figs[key]['balanced_accuracy']:.3f}"
                                for key, side in (("validation", "val"), ("test", "test")) if key in figs)
        say(f"saved {lb.best} as a bundle in {bundle}: {shown_sides}")
