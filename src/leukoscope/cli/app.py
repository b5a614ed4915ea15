"""The Typer application, its console and the error boundary shared by every command."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from leukoscope.errors import LeukoscopeError

app = typer.Typer(
    name="leukoscope",
    help="Classify single blood-cell images (ALL vs normal, or cell types), honestly evaluated.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and split data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not UTF-8 shown as ``\\xff`` escapes.

    Such names reach strings as surrogate escapes; printing them raw raises UnicodeEncodeError.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def guarded(fn: F) -> F:
    """Turn user errors into one red line and exit 1; Ctrl-C into exit 130, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LeukoscopeError as e:
            err_console.print(f"[bold red]error:[/] {escape(printable(str(e)))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (no Rich markup)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def main() -> None:
    app()
