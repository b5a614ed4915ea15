"""The import-layer contract (pyproject ``[tool.importlinter]``) holds, and ``make lint`` checks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (dev extra)")
def test_every_layer_only_imports_from_below() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 kept, 0 broken" in r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lint_runs_the_contract_after_ruff() -> None:
    plan = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), "lint"], capture_output=True, text=True,
                          timeout=60).stdout
    assert plan.index("ruff check") < plan.index("lint-imports")
