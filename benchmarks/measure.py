"""Run one command as this process's only child and record its wall time and peak memory.

    python benchmarks/measure.py OUT.json -- COMMAND [ARG ...]

``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the peak resident memory of the largest child, so a
process of its own per command makes it that command's. Exits with the command's status.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path


def measure(out: Path, cmd: list[str]) -> int:
    """Run ``cmd``; write its exit status, wall time, peak RSS and the machine load to ``out``."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    out.write_text(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mb": peak_kb / 1024,
                               "started": started, "load_before": load,
                               "load_after": os.getloadavg()[0], "cmd": cmd}, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit("usage: python benchmarks/measure.py OUT.json -- COMMAND [ARG ...]")
    raise SystemExit(measure(Path(sys.argv[1]), sys.argv[3:]))
