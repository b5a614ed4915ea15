"""Model registry: name -> builder, as in timm / torchgeo.

A model is one ``@register_model`` entry next to its builder; ``list_models()`` is exactly what
is registered, so the CLI, the leaderboard, tuning and the tests never keep their own lists.
Families: ``classical`` builders return an unfitted scikit-learn estimator (scaling included);
``network`` builders return a ``torch.nn.Module``; ``patient`` builders a
``patients.methods.PatientMethod``. ``space`` is a function ``trial -> params``
(Optuna's trial API) giving the model's hyperparameter search space.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from leukoscope.errors import ConfigError

FAMILIES = ("classical", "network", "patient")
#: Modules whose import registers models; imported on first use so the CLI starts fast.
_PROVIDERS = ("leukoscope.models.classical", "leukoscope.models.networks",
              "leukoscope.models.patient.methods")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: Callable[..., Any]
    space: Callable[[Any], dict[str, Any]] | None
    doc: str

    def build(self, **params: Any) -> Any:
        return self.builder(**params)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, family: str,
                   space: Callable[[Any], dict[str, Any]] | None = None) -> Callable:
    """Decorator registering ``builder`` under ``name``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelSpec(name, family, builder, space, doc[0] if doc else "")
        return builder

    return wrap


def _load_providers() -> None:
    for mod in _PROVIDERS:
        importlib.import_module(mod)


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching a glob pattern (and family), sorted."""
    _load_providers()
    return sorted(
        n for n, s in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (family is None or s.family == family)
    )


def get_model(name: str) -> ModelSpec:
    """The spec registered under ``name``, or a ``ConfigError`` listing the choices."""
    _load_providers()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose from: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
