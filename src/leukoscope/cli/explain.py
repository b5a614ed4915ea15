"""``leukoscope explain``: Grad-CAM overlays (networks) or feature attributions (classical)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.app import app, console, guarded
from leukoscope.cli.use import BundleArg, say


@app.command("explain")
@guarded
def explain_cmd(
    bundle: BundleArg,
    images: Annotated[list[str], typer.Argument(help="Image files, folders or quoted globs.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the PNGs (and CSVs) and explanations.csv.")],
) -> None:
    """Why each call was made: Grad-CAM heat maps, or the features that drove a classical model."""
    from leukoscope.bundle import load_bundle
    from leukoscope.explain import INDEX_FILE, explain

    skipped: list[tuple[str, str]] = []
    written = explain(load_bundle(bundle), images, out, on_skip=lambda p, r: skipped.append((p, r)))
    say(f"wrote {len(written)} explanation(s) to {out} (index: {Path(out) / INDEX_FILE})")
    if skipped:
        console.print(f"[yellow]{len(skipped)} unreadable file(s) skipped:[/]")
        for p, r in skipped:
            say(f"  {p}: {r}")
