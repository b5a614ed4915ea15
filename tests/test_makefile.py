"""``make test`` sets up what its tests need: the Debian packages of SYSTEM_PACKAGES (none removed here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def make(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path} if path is not None else None
    return subprocess.run([str(MAKE), "-s", "-C", str(ROOT), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_make_test_runs_the_system_step_first() -> None:
    plan = make("-n", "test").stdout
    assert "apt-get install" in plan and "/usr/bin/chromium" in plan
    assert "postgresql:/usr/lib/postgresql/*/bin/initdb" in plan  # any major version
    assert plan.index("/usr/bin/chromium") < plan.index("ruff check") < plan.index("pytest")


@pytest.mark.parametrize("binary", ["/bin/sh", "/b*n/s[h]"])  # a glob, as for PostgreSQL's versioned bin
def test_system_is_a_no_op_when_the_packages_are_there(binary: str) -> None:
    # /bin/sh stands in for a package's binary that is present
    r = make("system", f"SYSTEM_PACKAGES=dash:{binary}:tests/test_x.py")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_system_says_in_one_line_what_it_cannot_install(tmp_path: Path) -> None:
    """Without apt-get (or, not root, without sudo) nothing is installed and one line says which
    tests will fail; make goes on to the tests."""
    only_id = tmp_path / "bin"
    only_id.mkdir()
    (only_id / "id").symlink_to(shutil.which("id") or "/usr/bin/id")
    r = make("system", "SYSTEM_PACKAGES=chromium:/nonexistent/chromium:tests/test_serve_browser.py",
             path=str(only_id))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("not installing")
    assert "chromium" in lines[0] and lines[0].endswith("these tests will fail: tests/test_serve_browser.py")
