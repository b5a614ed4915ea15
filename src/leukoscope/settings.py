"""Process-wide settings read from the environment (one place, so tests can override)."""

import os
from pathlib import Path

#: Where the real sample data sets live (tests, demo and benchmarks read them in place).
DATA_ENV = "LEUKOSCOPE_DATA"
#: Where content-addressed caches (decoded images, features) go.
CACHE_ENV = "LEUKOSCOPE_CACHE"


def data_root() -> Path:
    """The shared data folder: ``$LEUKOSCOPE_DATA`` or ``../shared/data`` from the project root."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def cache_dir() -> Path:
    """The on-disk cache folder: ``$LEUKOSCOPE_CACHE`` or ``~/.cache/leukoscope``."""
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "leukoscope"
    root.mkdir(parents=True, exist_ok=True)
    return root


def threads() -> int:
    """Threads one model may use in this process: ``$OMP_NUM_THREADS`` when set, else every core.

    Engines that already run one single-threaded model per core (Ray actors) set it to 1, so the
    model's own thread pool does not fight them for the cores.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1
