"""What the benchmark scripts share: the machine, CPU seconds and load to report next to a figure,
a quick bundle to measure with, and a warm page cache so no method pays for the disk."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def hardware() -> str:
    """CPU model, cores, memory, Python and OS, in one line."""
    cpu, ram = "unknown CPU", ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    with contextlib.suppress(OSError, StopIteration):
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        ram = f", {kb / 1024 ** 2:.0f} GB RAM"
    return f"{cpu}, {os.cpu_count()} cores{ram}; Python {platform.python_version()}, {platform.system()}"


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (reused pool workers are not counted)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_average() -> float:
    """The 1-minute load average: how much the machine was shared while a figure was measured."""
    return os.getloadavg()[0]


def quick_bundle(folders: list[Path], out: Path, **settings: Any) -> Path:
    """Train a network on ``folders`` with ``settings`` (TrainConfig fields) into ``out``; the bundle.

    Speed figures do not depend on how well the weights are trained, so a short run serves.
    """
    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    return Path(train(read(folders), TrainConfig.build(**settings), out).path)


def byte_compile_leukoscope() -> None:
    """Write leukoscope's bytecode, as ``pip install`` does for every package it installs.

    An editable install (``make demo``) run with ``PYTHONDONTWRITEBYTECODE=1`` (as on this machine)
    never writes it, so every fresh process would compile leukoscope's ~50 modules from source
    (30-40 ms) while the libraries a plain script imports load theirs: whole-process timings
    compare installed code with installed code.
    """
    import compileall

    import leukoscope

    compileall.compile_dir(Path(leukoscope.__file__).parent, quiet=1)


def warm_page_cache(paths: Iterable[Path]) -> int:
    """Read every file once; how many there were."""
    n = 0
    for p in paths:
        p.read_bytes()
        n += 1
    return n
