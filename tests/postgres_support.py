"""A throwaway PostgreSQL server (Debian's ``postgresql`` package) for the multi-machine tune test.

The cluster lives in a fresh temp dir and listens on a Unix socket there only (no TCP port to clash
with), trusts local connections and is stopped and removed afterwards. ``initdb`` refuses to run as
root, and CI runs as root: then the server runs as the ``postgres`` user the Debian package creates
(else ``nobody``), in a dir that user owns. ``make test`` installs the package when it is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: The superuser role ``initdb`` creates; clients connect as it over the socket, trusted.
ROLE = "leukoscope"


def bindir() -> Path | None:
    """The newest installed PostgreSQL's bin dir (Debian keeps each major version apart), else the one
    ``initdb`` on PATH sits in."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    found = versions[-1] if versions else shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class Postgres:
    """A running server: ``url(db)`` is what a user passes to ``--storage``."""

    bin: Path
    socket_dir: Path

    def createdb(self, name: str) -> None:
        r = subprocess.run([str(self.bin / "createdb"), "-h", str(self.socket_dir), "-U", ROLE, name],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def url(self, db: str) -> str:
        return f"postgresql://{ROLE}@/{db}?host={self.socket_dir}"


def _as_server_user() -> dict[str, Any]:
    """subprocess arguments that drop root to the server's user (none when not root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    pytest.fail("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


def _scratch() -> str | None:
    """Where the cluster goes: memory (/dev/shm) when it has room, as on Linux hosts, where a cluster's
    1,300 files are made and removed in a moment (seconds on a busy disk); else the temp dir. Not
    pytest's tmp dir: its root-owned 0700 parent would lock the server's user out."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 512 * 2**20:
        return str(shm)
    return None


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for this module's tests; without PostgreSQL they fail (as the browser test
    does without chromium), never skip: ``make test`` installs it."""
    found = bindir()
    if found is None:
        pytest.fail("PostgreSQL not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): install "
                    "Debian's postgresql (apt-get install -y postgresql; make test does it)")
    home = Path(tempfile.mkdtemp(prefix="leukoscope-pg-", dir=_scratch()))
    user = _as_server_user()
    if user:
        os.chown(home, user["user"], user["group"])
    run = {**user, "cwd": home, "capture_output": True, "text": True, "timeout": 120}
    data, log = home / "data", home / "server.log"
    try:
        subprocess.run([str(found / "initdb"), "-D", str(data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, **run)
        started = subprocess.run([str(found / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                                  f"-k {home} -c listen_addresses='' -c fsync=off", "start"], **run)
        if started.returncode:
            pytest.fail(f"PostgreSQL did not start: {started.stderr.strip()}\n"
                        f"{log.read_text() if log.exists() else ''}")
        yield Postgres(found, home)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{Path(e.cmd[0]).name} failed: {e.stderr}")
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([str(found / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], **run)
        shutil.rmtree(home, ignore_errors=True)
