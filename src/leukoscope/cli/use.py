"""Options shared by the commands that use a trained bundle (evaluate, predict, explain, export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from leukoscope.cli.app import console, printable

BundleArg = Annotated[Path, typer.Argument(help="A model bundle folder (from train or benchmark).")]
TtaOpt = Annotated[bool, typer.Option("--tta", help="Test-time augmentation: mean over the 8 flips / "
                                      "90-degree rotations (8x slower).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
RuntimeOpt = Annotated[str, typer.Option(
    "--runtime", help="Network runtime: auto, torch, onnx, onnx-int8 (auto: ONNX Runtime fp32 when the "
    "bundle has a current export, else PyTorch).")]


def say(text: str) -> None:
    """Print plain text (paths, reasons): markup escaped, long paths never broken across lines."""
    console.print(escape(printable(text)), soft_wrap=True)
