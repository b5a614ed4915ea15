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
    skipped: list[tuple[str, str]] = []
    with progress() as bar:
        task = bar.add_task("decoding", total=len(m))
        report = eda_report(m, out, on_image=lambda: bar.advance(task),
                            on_skip=lambda p, why: skipped.append((p, why)))
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} unreadable image(s):[/]")
        for p, why in skipped:
            console.print(escape(f"  {p}: {why}"))
    console.print(escape(f"wrote {report} (and its PNG figures in {out})"))
