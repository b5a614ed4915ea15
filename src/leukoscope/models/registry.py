"""Model registry: name -> builder, as in timm / torchgeo.

A model is one ``@register_model`` entry next to its builder, declared by name in ``_BUILT_IN``
(``leukoscope.registry``); ``list_models()`` is exactly that set, so the CLI, the leaderboard,
tuning and the tests never keep their own lists.
Families: ``classical`` builders return an unfitted scikit-learn estimator (scaling included);
``network`` builders return a ``torch.nn.Module``; ``patient`` builders a
``patients.methods.PatientMethod``. ``space`` is a function ``trial -> params``
(Optuna's trial API) giving the model's hyperparameter search space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from leukoscope.registry import Registry

FAMILIES = ("classical", "network", "patient")
#: family -> the module whose import registers its built-in models.
MODULES = {"classical": "leukoscope.models.classical", "network": "leukoscope.models.networks",
           "patient": "leukoscope.models.patient.methods"}
#: Every built-in model by family, declared so that listing them imports neither scikit-learn nor
#: torch (``--help``); a model is registered where it is built, with ``@register_model``.
_BUILT_IN = {
    "classical": ("extra_trees", "gaussian_nb", "knn", "lda", "lightgbm", "logistic_regression", "pca-svm",
                  "random_forest", "ridge", "ridge_cv", "svc", "xgboost"),
    "network": ("efficientnet_lite0", "leukonet"),
    "patient": ("attention-mil", "cell-logodds", "composition", "mean-embedding"),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: Callable[..., Any]
    space: Callable[[Any], dict[str, Any]] | None
    doc: str

    def build(self, **params: Any) -> Any:
        return self.builder(**params)


MODELS: Registry[ModelSpec] = Registry(
    "model", {name: MODULES[family] for family, names in _BUILT_IN.items() for name in names})


def register_model(name: str, *, family: str,
                   space: Callable[[Any], dict[str, Any]] | None = None) -> Callable:
    """Decorator registering ``builder`` under ``name``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")
    if MODELS.module(name) not in (None, MODULES[family]):
        raise ValueError(f"model {name!r} is declared in another family than {family!r}")

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        doc = (builder.__doc__ or "").strip().splitlines()
        MODELS.add(name, ModelSpec(name, family, builder, space, doc[0] if doc else ""), builder.__module__)
        return builder

    return wrap


def _family(name: str) -> str:
    module = MODELS.module(name)
    return next(f for f, m in MODULES.items() if m == module) if module else MODELS[name].family


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Model names matching a glob pattern (and family), sorted; imports no model."""
    return sorted(n for n in MODELS.names(pattern) if family is None or _family(n) == family)


def get_model(name: str) -> ModelSpec:
    """The spec registered under ``name`` (its module imported on first use), or a ``ConfigError``
    listing the choices."""
    return MODELS[name]
