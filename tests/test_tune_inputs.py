"""What ``tune`` is given besides a good study: a model it cannot search, bad ``--fix`` values, seeds at
and past numpy's bounds, an in-memory storage, an --out holding another study's outputs. 24 real
ALL-IDB2 cells (12 blasts, 12 normal), logistic regression or LDA: seconds a study."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from leukoscope.cli.verbs import app
from link_support import allidb2_cells

runner = CliRunner()
OUTPUTS = ("best.yaml", "best.json", "trials.csv", "report.html")


@pytest.fixture(scope="module")
def cells(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return allidb2_cells(data, tmp_path_factory.mktemp("allidb2") / "cells", per_class=12, step=1)


def _tune(cells: Path, out: Path, *options: str, trials: int = 2) -> Result:
    return runner.invoke(app, ["tune", str(cells), "--cv", "2", "--trials", str(trials), "--out", str(out),
                               *options])


def _refused(res: Result, message: str) -> None:
    """One error line holding ``message``, exit 1, no traceback."""
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    (error,) = (line for line in res.output.splitlines() if line.startswith("error:"))
    assert message in error and "Traceback" not in res.output


def test_tune_help_lists_only_the_models_it_can_search() -> None:
    from leukoscope.models.registry import list_models

    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", runner.invoke(app, ["tune", "--help"]).output).split())
    tunable = [*list_models(family="classical"), *list_models(family="network")]
    assert f"The model to tune: {', '.join(tunable)}." in flat  # no patient model among them


@pytest.mark.parametrize("options, message", [
    (["--model", "attention-mil"], "--model 'attention-mil' cannot be tuned; tune searches classical and "
                                   "network models: extra_trees, gaussian_nb,"),
    (["--model", "logistic_regression", "--fix", "C=abc"],
     "--fix C: The 'C' parameter of LogisticRegression must be a float in the range (0.0, inf]. Got 'abc' "
     "instead."),
    (["--model", "logistic_regression", "--fix", "C=-1"], "--fix C: The 'C' parameter of LogisticRegression"),
    (["--model", "lda", "--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
    (["--model", "lda", "--storage", "sqlite://"], "--storage 'sqlite://' is an in-memory SQLite database"),
    (["--model", "lda", "--storage", "sqlite:///:memory:"], "--storage 'sqlite:///:memory:' is an in-memory"),
], ids=["patient-model", "fix-not-a-number", "fix-out-of-range", "negative-seed", "sqlite-memory",
        "sqlite-memory-named"])
def test_bad_tune_inputs_are_one_line_naming_the_setting(cells: Path, tmp_path: Path, options: list[str],
                                                          message: str) -> None:
    _refused(_tune(cells, tmp_path / "o", *options), message)


def test_the_largest_seed_takes_every_repeat_of_the_cv(cells: Path, tmp_path: Path) -> None:
    """The folds of repeat r are shuffled with seed + r, which passed numpy's bound at the top seed."""
    res = _tune(cells, tmp_path / "o", "--model", "lda", "--seed", str(2**32 - 1))
    assert res.exit_code == 0, res.output


def test_a_study_never_replaces_the_outputs_of_another_in_its_out(cells: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _tune(cells, out, "--model", "logistic_regression", trials=3).exit_code == 0
    before = {f: (out / f).read_bytes() for f in OUTPUTS}
    _refused(_tune(cells, out, "--model", "lda"), f"--out {out} holds the outputs of study "
             "'logistic_regression'; writing study 'lda' there would replace them: give another --out")
    assert {f: (out / f).read_bytes() for f in OUTPUTS} == before
    resumed = _tune(cells, out, "--model", "logistic_regression", trials=4)  # the same study goes on
    assert resumed.exit_code == 0, resumed.output
    summary = yaml.safe_load((out / "best.json").read_text())
    assert summary["study"] == "logistic_regression"
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 4
