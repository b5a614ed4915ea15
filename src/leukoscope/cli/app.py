"""The Typer application, how its help reads, its console and the error boundary of every command.

``leukoscope --help`` lists the verbs in workflow order, grouped in panels (``PANELS``); every
option shows its default, flags show no ``<bool>`` type, and option help may name a registry's
choices as ``{layouts}``, ``{feature_kinds}``, ... (``cli.options.CHOICES``), filled in only when
that command's help is shown, so no command pays for them and ``--help`` imports no model library.
Every command runs behind ``guarded``: a ``LeukoscopeError`` or an ``OSError`` is one red line and exit 1.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, get_args, get_origin

import typer
from typer._click.exceptions import BadParameter
from typer._coercion import RuntimeParam
from typer._param_types import coerce_cli_path
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from leukoscope import __version__
from leukoscope.errors import ConfigError, LeukoscopeError
from leukoscope.filenames import printable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from leukoscope.data.cohort import SubjectTable
    from leukoscope.data.manifest import Manifest
    from leukoscope.data.rare import RareReport

F = TypeVar("F", bound=Callable[..., Any])

#: The top-level help panels, each with its verbs in the order a project uses them.
PANELS: dict[str, tuple[str, ...]] = {
    "Data": ("data",),
    "Classical": ("benchmark", "tune"),
    "Networks": ("train", "export"),
    "Use a model": ("evaluate", "compare", "predict", "report", "explain", "serve", "verify"),
}
#: ``leukoscope data``'s panels.
DATA_PANELS: dict[str, tuple[str, ...]] = {
    "Look": ("describe", "eda", "audit"),
    "Prepare": ("split", "features", "synth"),
}
#: The modules (``leukoscope.cli.<name>``) that register each verb when imported (``data``: its sub-verbs).
VERB_MODULES: dict[str, tuple[str, ...]] = {
    "data": ("data", "eda", "audit", "features"),
    **{verb: (verb,) for verbs in PANELS.values() for verb in verbs if verb != "data"},
}
#: The verbs (and data sub-verbs) whose --out is a folder: ``guarded`` refuses a file there before the
#: command starts, instead of after its work (benchmark's whole cross-validation).
OUT_FOLDERS = frozenset({"audit", "benchmark", "compare", "eda", "evaluate", "explain", "report", "train",
                         "tune"})


def _prepare_help(cmd: TyperCommand | TyperGroup, ctx: Any) -> None:
    """Before a command's help is drawn: flags lose their ``<bool>`` type (Typer 0.29 gives every
    flag one, ``--help`` included) and ``{choices}`` in option help are filled from the registries."""
    from leukoscope.cli.options import fill_choices

    for param in cmd.get_params(ctx):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        if isinstance(param, TyperOption | TyperArgument) and param.help and "{" in param.help:
            param.help = fill_choices(param.help)


_TRUE, _FALSE = {"1", "true", "t", "yes", "y", "on"}, {"0", "false", "f", "no", "n", "off", ""}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in _TRUE | _FALSE:
        raise ValueError(value)
    return word in _TRUE


@dataclass(frozen=True)
class _Plain(RuntimeParam):
    """Coercion of a str / Path / int / float / bool parameter (or a list of them) without pydantic.

    Typer 0.29 builds a pydantic ``TypeAdapter`` for every parameter, and importing pydantic for it
    is a third of a second of every command's start-up (half the start-up of ``leukoscope predict``
    on ONNX). Ranges (``min`` / ``max`` / ``clamp``) and path checks are kept (``coerce_cli_path``);
    parsed, file, choice and other parameters keep typer's own coercion.
    """

    kind: type = str

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, list | tuple):
            return [self._one(v, param, ctx) for v in value]
        return self._one(value, param, ctx)

    def _one(self, value: Any, param: Any, ctx: Any) -> Any:
        info = self.parameter_info
        if self.kind is Path:
            return coerce_cli_path(value if isinstance(value, Path) else Path(value), info, path_type=Path,
                                   param=param, ctx=ctx)
        try:
            v = _to_bool(value) if self.kind is bool else self.kind(value)
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number", bool: "true or false"}.get(self.kind, "text")
            raise BadParameter(f"{value!r} is not {kind}", ctx=ctx, param=param) from None
        lo, hi = info.min, info.max
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if info.clamp:
                return min(max(v, lo if lo is not None else v), hi if hi is not None else v)
            bounds = f"{'' if lo is None else f'{lo}<='}x{'' if hi is None else f'<={hi}'}"
            raise BadParameter(f"{v} is not in the range {bounds}", ctx=ctx, param=param)
        return v


def _plain_coercion(params: list[Any]) -> list[Any]:
    """``params``, those that ``_Plain`` covers given that coercion instead of typer's pydantic one
    (``--help`` included, which click makes on demand)."""
    for param in params:
        if isinstance(getattr(param, "_runtime_param", None), _Plain):
            continue
        desc = getattr(param, "type_descriptor", None)
        info = getattr(desc, "parameter_info", None)
        if desc is None or info is None or desc.file_annotation is not None or desc.is_choice \
                or getattr(info, "parser", None) is not None or getattr(info, "path_type", None) is not None:
            continue
        annotation = desc.annotation
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1 and (get_origin(annotation) is list or type(None) in get_args(annotation)):
            annotation = inner[0]
        if annotation in (str, Path, int, float, bool):
            param._runtime_param = _Plain(info, desc.annotation, annotation)
    return params


class Command(TyperCommand):
    """A leukoscope command (see the module docstring for how its help reads)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_coercion(super().get_params(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> None:  # typer's vendored click types
        _prepare_help(self, ctx)
        super().format_help(ctx, formatter)


class Group(TyperGroup):
    """A group of verbs, listed by ``panels`` (panel title -> verbs, in order); others go last."""

    panels: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for panel, names in self.panels.items():
            for name in names:
                verb = self.commands.get(name)
                if isinstance(verb, TyperCommand | TyperGroup):
                    verb.rich_help_panel = panel

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_coercion(super().get_params(ctx))

    def list_commands(self, ctx: Any) -> list[str]:
        order = [name for names in self.panels.values() for name in names]
        return sorted(super().list_commands(ctx), key=lambda n: order.index(n) if n in order else len(order))

    def format_help(self, ctx: Any, formatter: Any) -> None:  # typer's vendored click types
        _prepare_help(self, ctx)
        super().format_help(ctx, formatter)


class App(typer.Typer):
    """``typer.Typer`` whose verbs are listed by ``panels`` and whose commands are ``Command``, each
    behind the error boundary (``guarded``)."""

    def __init__(self, *, panels: dict[str, tuple[str, ...]], **kwargs: Any):
        group = type("Group", (Group,), {"panels": panels})
        super().__init__(cls=group, no_args_is_help=True, context_settings={"show_default": True}, **kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(name, cls=kwargs.pop("cls", Command), **kwargs)

        def wrap(fn: F) -> F:
            register(guarded(fn, out_folder=name in OUT_FOLDERS))
            return fn

        return wrap


app = App(
    name="leukoscope",
    help="Classify single blood-cell images (ALL vs normal, or cell types), honestly evaluated.",
    panels=PANELS,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = App(help="Look at data sets, split them, extract their features.", panels=DATA_PANELS)
app.add_typer(data_app, name="data")


def _print_version(given: bool) -> None:
    if given:
        sys.stdout.write(f"leukoscope {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the version and exit.")) -> None:
    """The options of ``leukoscope`` itself, before any verb."""


class LazyConsole:
    """A Rich console made at its first use. Importing Rich takes 19 ms, which a command that only
    prints plain lines (``say``; ``predict`` into a file or pipe) does not pay."""

    def __init__(self, stderr: bool = False):
        self.stderr = stderr

    @functools.cached_property
    def rich(self) -> Console:
        from rich.console import Console

        return Console(stderr=self.stderr, highlight=False, emoji=False)  # "a:smile:.png" prints as it is

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich, name)


console = LazyConsole()
err_console = LazyConsole(stderr=True)


def check_out_folder(out: Any, given: dict[str, Any]) -> None:
    """Refuse an --out folder that is a file, or lies under one, or lies inside a folder the command reads
    (``given``: its other arguments): a run written into a data set becomes part of it (its PNGs a class,
    its bundle folder an empty class) and the next read of that data fails or changes (``OUT_FOLDERS``)."""
    if not isinstance(out, Path):
        return
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"--out {out}: {'a file' if p == out else f'{p} is a file'}, not a folder")
            break
    where = os.path.realpath(out)
    for name, value in given.items():
        for folder in value if isinstance(value, list | tuple) else [value]:
            if name != "out" and isinstance(folder, Path) and folder.is_dir() \
                    and Path(where).is_relative_to(os.path.realpath(folder)):
                raise ConfigError(f"--out {out} is inside {folder}, which this command reads; write it "
                                  "elsewhere")


def os_reason(e: OSError) -> str:
    """An OS error as one line: the file(s) it names and the OS's reason."""
    files = [f for f in (e.filename, e.filename2) if f is not None]
    reason = e.strerror or str(e)
    return f"{' -> '.join(map(str, files))}: {reason}" if files else reason


def guarded(fn: F, out_folder: bool = False) -> F:
    """Turn user errors into one red line and exit 1; Ctrl-C into exit 130, no traceback.

    An ``OSError`` (a file where a folder goes, a folder that cannot be written, a full disk) is the
    user's machine, not a bug: one line naming the file. Other exceptions stay tracebacks: they are bugs.
    With ``out_folder``, an --out that is a file is refused before the command does any work."""

    def fail(message: str) -> typer.Exit:
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)
        return typer.Exit(1)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if out_folder:
                check_out_folder(kwargs.get("out"), kwargs)
            return fn(*args, **kwargs)
        except LeukoscopeError as e:
            raise fail(str(e)) from None
        except OSError as e:
            raise fail(os_reason(e)) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def say(text: str, err: bool = False) -> None:
    """Print plain text (paths, reasons) on stdout (``err``: stderr) as it is: no markup, long paths
    never broken."""
    stream = sys.stderr if err else sys.stdout
    stream.write(printable(text) + "\n")
    stream.flush()  # in order with lines Rich prints (it flushes each)


def print_skipped(skipped: list[tuple[str, str]]) -> None:
    """List the images of a data set a batch command could not use."""
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} unreadable image(s):[/]")
        for path, reason in skipped:
            say(f"  {path}: {reason}")


def read_data(paths: Sequence[Path | str], layout: str | None = None,
              subjects: SubjectTable | None = None, mapped: bool = False) -> Manifest:
    """The data sets at ``paths`` (``data.readers.read``; cohorts keyed by ``subjects`` where given), saying
    which files the readers left out and why (a name that is not UTF-8; in a cohort, a file that is not a
    cell, a folder the table does not list): every verb that reads data reads it here, so none drops a file
    unsaid. ``mapped``: a class map follows, so the sets' classes need not agree yet.
    """
    from leukoscope.data.manifest import skipped_files
    from leukoscope.data.readers import read

    m = read(paths, layout, subjects, same_classes=not mapped)
    if left := skipped_files(m):
        console.print(f"[yellow]left out {len(left)} file(s):[/]")
        for path, reason in left:
            say(f"  {path}: {reason}")
    return m


def print_rare(report: RareReport | None) -> None:
    """The line saying which classes were merged or left out as rare, and how many cells."""
    line = report.line() if report is not None else None
    if line:
        say(f"rare classes: {line}")


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (no Rich markup)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def register(verb: str | None = None) -> App:
    """``app`` with ``verb`` registered (every verb when None or not a verb), by importing its modules."""
    import importlib

    every = tuple(name for names in VERB_MODULES.values() for name in names)
    for name in VERB_MODULES.get(verb or "", every):
        importlib.import_module(f"leukoscope.cli.{name}")
    return app


def main() -> None:
    """The ``leukoscope`` console script.

    Only the verb it runs is registered (``leukoscope --help`` and a mistyped verb get them all):
    importing the other verb modules and building their options was 25 ms of every command.
    When the command is done, every object left is frozen (``gc.freeze``): the interpreter's exit
    runs a full garbage collection over everything still alive (Typer, Rich, numpy, ONNX
    Runtime, ...), and frozen objects are skipped. It took 40-50 ms of a 0.35 s ``predict`` on 8
    cells (aria_all Lite0, ONNX, idle 2 cores). Commands close their files in ``with`` blocks, so
    nothing waits on that collection.
    """
    register(sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        app()
    finally:
        gc.freeze()
