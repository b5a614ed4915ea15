"""How ``leukoscope --help`` reads: verbs by panel in workflow order, help and a default for every
option, no ``<bool>`` noise, choices from the registries, one version, and no model library imported."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

import leukoscope
from leukoscope.cli.app import DATA_PANELS, VERB_MODULES
from leukoscope.cli.options import CHOICES
from leukoscope.cli.verbs import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _commands(cmd: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the tree, with the words that invoke it."""
    cmd = cmd if cmd is not None else typer.main.get_command(app)
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = [p for p, _ in _commands()]


def _flat(text: str) -> str:
    """Help text with the box drawing gone and whitespace collapsed (lines wrap anywhere)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _panels(help_text: str) -> list[tuple[str, list[str]]]:
    """(panel title, verbs) in the order the help shows them; the Options panel left out."""
    panels: list[tuple[str, list[str]]] = []
    for line in help_text.splitlines():
        if title := re.match(r"╭─ (.+?) ─", line):
            panels.append((title.group(1), []))
        elif (verb := re.match(r"│ (\w+)\s", line)) and panels:
            panels[-1][1].append(verb.group(1))
    return [(t, v) for t, v in panels if t != "Options"]


def test_verbs_listed_by_panel_in_workflow_order() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0, res.output
    assert _panels(res.output) == [
        ("Data", ["data"]),
        ("Classical", ["benchmark", "tune"]),
        ("Networks", ["train", "export"]),
        ("Use a model", ["evaluate", "compare", "predict", "report", "explain", "serve", "verify"]),
    ]
    data = runner.invoke(app, ["data", "--help"])
    assert _panels(data.output) == [("Look", ["describe", "eda", "audit"]),
                                    ("Prepare", ["split", "features", "synth"])]


def test_eda_and_features_are_data_commands() -> None:
    for verb in ("eda", "features"):
        assert runner.invoke(app, ["data", verb, "--help"]).exit_code == 0
        assert runner.invoke(app, [verb, "--help"]).exit_code != 0


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "leukoscope")
def test_every_option_has_help_and_shows_its_default(path: tuple[str, ...]) -> None:
    ctx = None
    cmd = typer.main.get_command(app)
    for word in ("leukoscope", *path):  # each context under its parent, as the command line makes them
        cmd = cmd if ctx is None else cmd.commands[word]
        ctx = cmd.make_context(word, [], parent=ctx, resilient_parsing=True)
    assert ctx is not None and ctx.show_default, "App turns show_default on for every command"
    for param in cmd.get_params(ctx):
        assert isinstance(param, TyperOption | TyperArgument)
        assert param.help, f"{' '.join(path)} {param.name}: no help text"
        if isinstance(param, TyperOption) and not param.required:
            off_flag = param.is_flag and not param.secondary_opts and not param.default
            assert off_flag or param.default is not None or isinstance(param.show_default, str), (
                f"{' '.join(path)} {param.opts[0]}: default None, and the help does not say what that means")


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "leukoscope")
def test_help_has_no_bool_noise(path: tuple[str, ...]) -> None:
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output and "--help Show this message and exit." in _flat(res.output)
    assert not [k for k in CHOICES if f"{{{k}}}" in res.output], "a {choices} placeholder was not filled"


def test_defaults_are_shown() -> None:
    flat = _flat(runner.invoke(app, ["benchmark", "--help"]).output)
    assert "Number of folds (capped by the groups). [default: 5]" in flat
    assert "[default: (detected)]" in flat and "[default: (one per core)]" in flat


def test_the_step_floor_in_the_help_is_the_models() -> None:
    from leukoscope.models.networks import network_class

    floor = network_class("efficientnet_lite0").train_defaults["min_steps"]
    help_text = _flat(runner.invoke(app, ["train", "--help"]).output)
    assert f"e.g. {floor} steps for efficientnet_lite0" in help_text


def _registry_choices() -> list[tuple[list[str], str, list[str]]]:
    from leukoscope.bundle.format import RUNTIMES
    from leukoscope.data.readers import LAYOUTS
    from leukoscope.features import list_feature_kinds
    from leukoscope.models.registry import list_models
    from leukoscope.predict import ENGINES
    from leukoscope.tune.settings import METRICS, PRUNERS

    return [
        (["data", "describe"], "Force a layout:", LAYOUTS.names()),
        (["data", "features"], "Feature kind:", list_feature_kinds()),
        (["benchmark"], "names or globs of classical models:", list_models(family="classical")),
        (["tune"], "The model to tune:", [*list_models(family="classical"), *list_models(family="network")]),
        (["tune"], "What the search maximises:", list(METRICS)),
        (["tune"], "How trials are stopped early:", list(PRUNERS)),
        (["predict"], "Where to run:", ENGINES.names()),
        (["predict"], "Network runtime:", list(RUNTIMES)),
        (["serve"], "Network runtime:", list(RUNTIMES)),
    ]


@pytest.mark.parametrize("words, before, names", _registry_choices(), ids=lambda x: str(x)[:30])
def test_choices_in_help_are_the_registries(words: list[str], before: str, names: list[str]) -> None:
    flat = _flat(runner.invoke(app, [*words, "--help"]).output)
    assert f"{before} {', '.join(names)}" in flat


def test_version_is_written_once() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output == f"leukoscope {leukoscope.__version__}\n"
    assert importlib.metadata.version("leukoscope") == leukoscope.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "leukoscope.__version__"}
    version = re.compile(r"[\"']\d+\.\d+\.\d+[\"']")
    written = [p for p in (ROOT / "src").rglob("*.py") if version.search(p.read_text())]
    assert written == [ROOT / "src" / "leukoscope" / "__init__.py"]


def test_help_imports_no_model_library() -> None:
    """Every command's help, in one process: choices come from registries that import no model code."""
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from leukoscope.cli.verbs import app\n"
            "r = CliRunner().invoke(app, ['--help'])\n"
            "assert r.exit_code == 0, r.output\n"
            "top = sorted(m for m in ('numpy', 'pandas') if m in sys.modules)\n"
            f"for words in {COMMANDS!r}:\n"
            "    r = CliRunner().invoke(app, [*words, '--help'])\n"
            "    assert r.exit_code == 0, r.output\n"
            "print(top, sorted(m for m in ('torch', 'sklearn', 'onnxruntime', 'ray', 'skops') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[] []"  # leukoscope --help: not even numpy


def test_the_whole_command_has_exactly_the_verbs_of_the_table() -> None:
    group = typer.main.get_command(app)
    assert set(group.commands) == set(VERB_MODULES)  # type: ignore[attr-defined]
    assert set(group.commands["data"].commands) == {v for vs in DATA_PANELS.values() for v in vs}  # type: ignore[attr-defined]


@pytest.mark.parametrize("verb", sorted(VERB_MODULES))
def test_the_console_script_registers_only_the_verb_it_runs(verb: str) -> None:
    """In a fresh interpreter, ``register(verb)`` (what ``main`` does) gives that verb and imports no
    other verb's module: a command pays for its own module only."""
    code = ("import json, sys\nfrom typer.main import get_command\nfrom leukoscope.cli.app import register\n"
            f"group = get_command(register({verb!r}))\n"
            "print(json.dumps([sorted(group.commands), [m.rsplit('.', 1)[1] for m in sys.modules "
            "if m.startswith('leukoscope.cli.')]]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    commands, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert verb in commands and set(commands) <= {verb, "data"}
    others = {m for v, ms in VERB_MODULES.items() if v != verb for m in ms} - set(VERB_MODULES[verb])
    assert not others & set(modules), sorted(others & set(modules))

