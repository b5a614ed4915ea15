"""``leukoscope explain``: Grad-CAM overlays (networks) or feature attributions (classical)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.app import app, console, say
from leukoscope.cli.options import BundleArg, ImagesArg
from leukoscope.cli.progress import shown
from leukoscope.errors import DataError


@app.command("explain")
def explain_cmd(
    bundle: BundleArg,
    images: ImagesArg,
    out: Annotated[Path, typer.Option("--out", help="Folder for the PNGs (and CSVs) and explanations.csv.")],
) -> None:
    """Why each call was made: Grad-CAM heat maps, or the features that drove a classical model."""
    from leukoscope.bundle import load_bundle
    from leukoscope.explain import INDEX_FILE, explain

    skipped: list[tuple[str, str]] = []
    with shown() as bars:
        written = explain(load_bundle(bundle), images, out, lambda p, r: skipped.append((p, r)),
                          progress=bars)
    say(f"wrote {len(written)} explanation(s) to {out} (index: {Path(out) / INDEX_FILE})")
    if skipped:
        console.print(f"[yellow]{len(skipped)} unreadable file(s) skipped:[/]")
        for p, r in skipped:
            say(f"  {p}: {r}")
    if not written:
        raise DataError(f"nothing explained: none of the {len(skipped)} input image(s) could be read")
