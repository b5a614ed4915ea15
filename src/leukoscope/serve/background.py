"""``leukoscope serve`` in a child process, for scripts, tests and the load benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from leukoscope.errors import LeukoscopeError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running server: its base URL, its process id and the file its output goes to."""

    url: str
    pid: int
    log: Path

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def peak_rss(self) -> int:
        """The server's peak resident memory so far, in bytes (Linux's VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise LeukoscopeError(f"no VmHWM in /proc/{self.pid}/status")


@contextmanager
def serving(bundle: Path | str, *options: str, port: int | None = None,
            timeout: float = 120.0) -> Iterator[Server]:
    """Start the server on loopback, wait until ``/healthz`` answers, yield it; stop it after.

    Its output goes to a file, not a pipe, so a chatty server never blocks on a full pipe.
    """
    import httpx

    port = port or free_port()
    cmd = [sys.executable, "-c", "from leukoscope.cli import main; main()", "serve", str(bundle),
           "--host", "127.0.0.1", "--port", str(port), *options]
    with tempfile.TemporaryDirectory(prefix="leukoscope-serve-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        server = Server(f"http://127.0.0.1:{port}", proc.pid, log)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise LeukoscopeError(f"leukoscope serve exited with code {proc.returncode}: "
                                          f"{server.output().strip()}")
                try:
                    if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise LeukoscopeError(f"leukoscope serve did not answer {server.url}/healthz "
                                          f"within {timeout:.0f} s")
                time.sleep(0.2)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
