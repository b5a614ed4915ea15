"""Shared by the patient-level tests: small real DeepAPL cohorts in tmp dirs, embedded once per session.

A cohort here is DeepAPL's own layout (``Data/master.csv`` + ``Data/All/Patient_XX/...``) holding a
subset of its patients and of their cells, hard-linked from the real data (copied where links fail).
Cells are embedded at ``SIZE`` px to keep the tests inside the budget of ``make test``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leukoscope.cli.verbs import app

SIZE = 64
FEATURES = {"input_size": SIZE}
#: A patient with a truncated JPEG (a counted skip) among its cells.
TRUNCATED = Path("Patient_24") / "Signed slides" / "Blast, no lineage spec" / "BL_7821735.jpg"
_made: dict[str, Path] = {}
runner = CliRunner()


def run(*args: object) -> tuple[int, str]:
    """A leukoscope command through Typer's CliRunner: (exit code, output); an unexpected exception
    is raised, not folded into the exit code."""
    r = runner.invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def patients(data: Path, per_class: int, skip: int = 0) -> list[str]:
    """Ids of ``per_class`` patients of each diagnosis, after the first ``skip`` of each."""
    master = pd.read_csv(data / "deepapl" / "Data" / "master.csv")
    return [p for _, g in master.groupby("Diagnosis") for p in g["Patient_ID"].iloc[skip:skip + per_class]]


def make_cohort(dst: Path, data: Path, ids: list[str], cells: int) -> Path:
    """A DeepAPL-shaped cohort of these patients: ``cells`` typed cells each (spread over the type
    folders; a truncated JPEG of theirs included) plus one unsigned cell, where they have one."""
    src = data / "deepapl" / "Data"
    master = pd.read_csv(src / "master.csv")
    (dst / "Data").mkdir(parents=True)
    master[master["Patient_ID"].isin(ids)].to_csv(dst / "Data" / "master.csv", index=False)
    for pid in ids:
        files = sorted(p for p in (src / "All" / pid).rglob("*.jpg") if p.stat().st_size < 200_000)
        typed = [p for p in files if "Signed slides" in p.parts]
        unsigned = [p for p in files if "Unsigned slides" in p.parts][:1]
        step = max(1, len(typed) // cells)
        broken = [p for p in typed if p.relative_to(src / "All") == TRUNCATED]
        keep = typed[::step][:cells] + unsigned + broken
        for p in dict.fromkeys(keep):
            _link(p, dst / "Data" / "All" / p.relative_to(src / "All"))
    return dst


def _once(key: str, factory: pytest.TempPathFactory, build) -> Path:  # type: ignore[no-untyped-def]
    if key not in _made:
        _made[key] = build(factory.mktemp(key))
    return _made[key]


@pytest.fixture(scope="session")
def cohort(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 AML (Patient_24, with a truncated JPEG, among them) + 12 APL patients, 8 typed cells each."""
    ids = [p for p in patients(data, 12) if p != "Patient_12"] + ["Patient_24"]
    return _once("cohort", tmp_path_factory, lambda tmp: make_cohort(tmp / "cohort", data, sorted(ids), 8))


@pytest.fixture(scope="session")
def later_cohort(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another cohort: 4 AML + 4 APL patients the ``cohort`` fixture does not hold."""
    ids = patients(data, 4, skip=13)
    return _once("later", tmp_path_factory, lambda tmp: make_cohort(tmp / "later", data, ids, 8))


@pytest.fixture(scope="session")
def bags(cohort: Path):  # type: ignore[no-untyped-def]
    from leukoscope.data.readers import read
    from leukoscope.patients.bags import load_bags

    return load_bags(read([cohort]), "diagnosis", features=FEATURES)


@pytest.fixture(scope="session")
def run_dir(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train_patients`` on ``cohort``: mean-embedding, 3 folds, 1 repeat."""
    from leukoscope.data.readers import read
    from leukoscope.patients.train import train_patients

    def build(tmp: Path) -> Path:
        train_patients(read([cohort]), "diagnosis", tmp / "run", "mean-embedding", repeats=1, folds=3,
                       features=FEATURES)
        return tmp / "run"

    return _once("run", tmp_path_factory, build)
