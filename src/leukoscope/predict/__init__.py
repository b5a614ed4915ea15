"""Uses of a bundle on many images: batch prediction engines (local, Ray) and test-time augmentation.

``ENGINES`` holds the ``--engine`` choices: each module registers its predict function with
``@ENGINES.register(name)`` and is imported on first use (Ray only when asked for). Every engine
takes ``(bundle, inputs, out, batch_size=..., tta=..., progress=...)`` and returns a summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from leukoscope.errors import ConfigError
from leukoscope.registry import Registry

ENGINES: Registry[Callable[..., Any]] = Registry(
    "engine", {"local": "leukoscope.predict.local", "ray": "leukoscope.predict.ray_engine"})


def get_engine(name: str) -> Callable[..., Any]:
    """The predict function of an engine, imported on first use."""
    if name not in ENGINES:
        raise ConfigError(f"--engine {name!r} is not one of {', '.join(ENGINES.names())}")
    return ENGINES[name]
