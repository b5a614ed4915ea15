"""What every benchmark script reports next to its figures: CPU seconds spent and machine load."""

from __future__ import annotations

import os
import resource


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (reused pool workers are not counted)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_average() -> float:
    """The 1-minute load average: how much the machine was shared while a figure was measured."""
    return os.getloadavg()[0]
