"""``leukoscope verify``: check a bundle before using or sharing it."""

from __future__ import annotations

import typer
from rich.markup import escape

from leukoscope.cli.app import app, console
from leukoscope.cli.options import BundleArg
from leukoscope.filenames import printable


@app.command("verify")
def verify_cmd(bundle: BundleArg) -> None:
    """Check a bundle before using or sharing it; one line per check, exit 1 when any fails.

    The checks: config.json and its format version, the files it declares, a readable metrics.json,
    ONNX files as export wrote them (SHA-256) and model.onnx opening itself, weights that fit the
    config (every runtime the bundle's family loads), and a smoke prediction whose rows sum to 1.
    """
    from leukoscope.bundle.verify import verify

    findings = verify(bundle)
    for f in findings:
        mark = "[green]ok  [/]" if f.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {escape(printable(f'{f.check}: {f.detail}'))}", soft_wrap=True)
    if not all(f.ok for f in findings):
        raise typer.Exit(1)
