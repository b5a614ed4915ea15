"""``leukoscope data features``: export the cached per-image feature table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.app import data_app, print_skipped, read_data, say
from leukoscope.cli.options import KindOpt, LayoutOpt, Paths
from leukoscope.cli.progress import shown


@data_app.command("features")
def features_cmd(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    kind: KindOpt = "handcrafted",
    layout: LayoutOpt = None,
) -> None:
    """Compute (or reuse from the cache) features of every image and write them as Parquet."""
    from leukoscope.features import extract
    from leukoscope.io import atomic_path

    m = read_data(paths, layout)
    with shown() as bars:
        frame, skipped = extract(m, kind, progress=bars)
    table = m.loc[frame.index, ["path", "label", "subject", "group", "source_split"]].join(frame)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.reset_index(drop=True).to_parquet(tmp, index=False)
    say(f"wrote {len(table)} rows x {frame.shape[1]} {kind} features to {out}")
    print_skipped(skipped)
