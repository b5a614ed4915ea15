"""``leukoscope data eda``: the exploratory data report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.app import data_app, print_skipped, read_data, say
from leukoscope.cli.options import LayoutOpt, Paths
from leukoscope.cli.progress import shown


@data_app.command("eda")
def eda_cmd(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html and the PNG figures.")],
    layout: LayoutOpt = None,
) -> None:
    """Exploratory report: classes, subjects, sample grid, image sizes, colours (HTML + PNGs)."""
    from leukoscope.eda import eda_report

    m = read_data(paths, layout)
    skipped: list[tuple[str, str]] = []
    with shown() as bars:
        report = eda_report(m, out, lambda p, why: skipped.append((p, why)), progress=bars)
    print_skipped(skipped)
    say(f"wrote {report} (and its PNG figures in {out})")
