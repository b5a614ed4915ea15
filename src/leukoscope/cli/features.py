"""``leukoscope features``: export the cached per-image feature table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from leukoscope.cli.app import app, console, guarded
from leukoscope.cli.data import LayoutOpt, Paths, progress
from leukoscope.io import atomic_path

KindOpt = Annotated[str, typer.Option("--kind", "--features",
                                      help="Feature kind: handcrafted, deep or both.")]


def print_skipped(skipped: list[tuple[str, str]]) -> None:
    """List the images a batch command could not use."""
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} unreadable image(s):[/]")
        for path, reason in skipped:
            console.print(f"  {escape(path)}: {escape(reason)}")


@app.command("features")
@guarded
def features_cmd(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    kind: KindOpt = "handcrafted",
    layout: LayoutOpt = None,
) -> None:
    """Compute (or reuse from the cache) features of every image and write them as Parquet."""
    from leukoscope.data.readers import read
    from leukoscope.features import extract

    m = read(paths, layout)
    with progress() as bar:
        task = bar.add_task(f"{kind} features", total=len(m))
        frame, skipped = extract(m, kind, on_progress=lambda done, total: bar.update(
            task, completed=done, total=total))
    table = m.loc[frame.index, ["path", "label", "subject", "group", "source_split"]].join(frame)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.reset_index(drop=True).to_parquet(tmp, index=False)
    console.print(escape(f"wrote {len(table)} rows x {frame.shape[1]} {kind} features to {out}"))
    print_skipped(skipped)
