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
