"""``leukoscope predict``: calibrated class probabilities for many images, to CSV (resumable)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.app import app, console, say
from leukoscope.cli.options import AdaptOpt, BatchOpt, BundleArg, ImagesArg, RuntimeOpt, TtaOpt
from leukoscope.cli.progress import shown
from leukoscope.errors import ConfigError, DataError

#: Options only some engines take: flag -> keyword of the engine's predict function.
ENGINE_FLAGS = {"--address": "address", "--num-cpus": "num_cpus", "--csv": "write_csv",
                "--restart": "restart", "--adapt": "adapt"}
#: The help panel of the ``--engine ray`` options.
RAY = "Ray engine"


@app.command("predict")
def predict_cmd(
    bundle: BundleArg,
    inputs: ImagesArg,
    out: Annotated[Path, typer.Option("--out", help=(
        "CSV of path, subject, predicted, p_<class>... (ray: a folder)."))],
    tta: TtaOpt = False,
    batch_size: BatchOpt = 64,
    engine: Annotated[str, typer.Option("--engine", help="Where to run: {engines} (ray: Ray Data on this "
                                        "machine or a cluster, pip install -e .\\[ray]).")] = "local",
    runtime: RuntimeOpt = "auto",
    address: Annotated[str | None, typer.Option(
        "--address", help="A running Ray cluster (auto, head-host:6379).", show_default="a new local one",
        rich_help_panel=RAY)] = None,
    num_cpus: Annotated[int | None, typer.Option(
        "--num-cpus", min=1, help="CPUs of the local Ray instance.", show_default="all",
        rich_help_panel=RAY)] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Also write predictions.csv.", rich_help_panel=RAY)
                   ] = False,
    restart: Annotated[bool, typer.Option("--restart", help="local: discard the rows of an interrupted "
                                          "run in <out>.partial and start over.")] = False,
    adapt: AdaptOpt = False,
) -> None:
    """Predict every image; a killed run resumes from <out>.partial when run again.

    The rerun must use the same bundle, runtime, --tta and inputs (recorded in <out>.partial.json);
    another one is refused, naming what differs, unless --restart. One run per --out at a time: a
    second one is refused while the first writes. Exits 1 when no input could be read.
    """
    from leukoscope.bundle import load_bundle
    from leukoscope.predict import get_engine

    run = get_engine(engine)
    given = {flag: v for flag, v in zip(ENGINE_FLAGS, (address, num_cpus, csv, restart, adapt), strict=True)
             if v}
    if unknown := [flag for flag in given if ENGINE_FLAGS[flag] not in inspect.signature(run).parameters]:
        raise ConfigError(f"{', '.join(unknown)}: not an option of --engine {engine}")
    b = load_bundle(bundle, runtime=runtime)
    with shown() as bars:
        s = run(b, inputs, out, batch_size=batch_size, tta=tta, progress=bars,
                **{ENGINE_FLAGS[flag]: v for flag, v in given.items()})
    resumed = f" ({s.resumed} kept from an interrupted run)" if s.resumed else ""
    if s.adaptation:
        from rich.markup import escape

        from leukoscope.predict.adapt import adaptation_line

        say(adaptation_line(s.adaptation))
        if "warning" in s.adaptation:
            console.print(f"[yellow]note:[/] {escape(s.adaptation['warning'])}")
    if s.rows:
        say(f"wrote {s.rows} rows to {s.out}{resumed}; {s.predicted} predicted in "
            f"{s.seconds:.1f} s ({s.images_per_second:.1f} images/s, {type(b).__name__})")
    if s.skipped:
        console.print(f"[yellow]{len(s.skipped)} unreadable file(s) skipped:[/]")
        for path, reason in s.skipped:
            say(f"  {path}: {reason}")
    if not s.rows:
        raise DataError(f"nothing predicted: none of the {len(s.skipped)} input image(s) could be read; "
                        f"{s.out} has no rows")
