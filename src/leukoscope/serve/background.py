"""``leukoscope serve`` in a child process, for scripts, tests and the load benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from leukoscope.errors import LeukoscopeError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(bundle: Path | str, *options: str, port: int | None = None,
            timeout: float = 120.0) -> Iterator[str]:
    """Start the server on loopback, wait until ``/healthz`` answers, yield its base URL; stop it after."""
    import httpx

    port = port or free_port()
    cmd = [sys.executable, "-c", "from leukoscope.cli import main; main()", "serve", str(bundle),
           "--host", "127.0.0.1", "--port", str(port), *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise LeukoscopeError(f"leukoscope serve exited with code {proc.returncode}: {out.strip()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise LeukoscopeError(f"leukoscope serve did not answer {url}/healthz within {timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
