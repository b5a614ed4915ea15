"""Uses of a bundle on many images: batch prediction engines (local, Ray) and test-time augmentation.

``ENGINES`` maps an ``--engine`` name to the ``"module:function"`` that runs it; every engine takes
``(bundle, inputs, out_csv, batch_size=..., tta=..., on_progress=...)`` and returns a summary.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from leukoscope.errors import ConfigError

ENGINES: dict[str, str] = {
    "local": "leukoscope.predict.local:predict",
    "ray": "leukoscope.predict.ray_engine:predict",
}


def get_engine(name: str) -> Callable[..., Any]:
    """The predict function of an engine, imported on first use."""
    if name not in ENGINES:
        raise ConfigError(f"--engine {name!r} is not one of {', '.join(ENGINES)}")
    module, fn = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), fn)
