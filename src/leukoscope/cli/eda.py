"""``leukoscope eda``: the exploratory data report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from leukoscope.cli.app import app, console, guarded
from leukoscope.cli.data import LayoutOpt, Paths, progress


@app.command("eda")
@guarded
def eda_cmd(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html and the PNG figures.")],
    layout: LayoutOpt = None,
) -> None:
    """Exploratory report: classes, subjects, sample grid, image sizes, colours (HTML + PNGs)."""
    from leukoscope.data.readers import read
    from leukoscope.eda import eda_report

    m = read(paths, layout)
    with progress() as bar:
        task = bar.add_task("decoding", total=len(m))
        report = eda_report(m, out, on_image=lambda: bar.advance(task))
    console.print(escape(f"wrote {report} (and its PNG figures in {out})"))
