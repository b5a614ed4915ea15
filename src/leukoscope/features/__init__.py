"""Feature kinds: a registry of extractors that turn cell images into one numeric row each.

A kind is one class decorated with ``@register_features("name")``. It is constructed from its
parameters (``get_extractor(kind, **params)``) and exposes:

- ``compute(images) -> np.ndarray``: float32, one row per HxWx3 uint8 RGB image (NaN where a
  feature cannot be measured; the classical pipelines impute);
- ``names() -> list[str]``: one column name per feature, unique across kinds (prefix them);
- ``params() -> dict``: JSON-able parameters that fully determine the output. The on-disk cache
  keys on them (with ``kind`` and ``version``) and a classical bundle stores them in
  ``config["features"] = {"kind": ..., "params": ...}`` to rebuild the extractor at load time;
- class attributes ``version`` (bump when the numbers change, so stale cache entries are not
  reused), ``parallel`` (True: ``extract`` runs ``compute`` in worker processes over all cores,
  one small chunk of images each; False: it calls ``compute`` in this process on batches of
  ``batch_size`` images, which is what a torch model wants) and ``batch_size``.

How the deep kind plugs in: ``leukoscope/features/deep.py`` defines a class decorated with
``@register_features("deep")``, ``parallel = False``, computing batched embeddings with torch
(imported inside the module, which is only imported when the kind is first asked for; see
``_PROVIDERS``). ``both`` is the concatenation of handcrafted and deep: each part is computed
and cached under its own key, then the columns are joined (``Concat.parts``).

``extract(m, kind, cache=None, **params)`` (``features/cache.py``) is the one entry point the
leaderboard, the CLI and the bundles use.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from leukoscope.errors import ConfigError

#: kind -> module whose import registers it; imported on first use (torch stays unloaded).
_PROVIDERS: dict[str, str] = {
    "handcrafted": "leukoscope.features.handcrafted",
    "deep": "leukoscope.features.deep",
}


class FeatureExtractor(ABC):
    """Base class of a feature kind; subclasses set ``kind`` via ``@register_features``."""

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1
    parallel: ClassVar[bool] = True
    batch_size: ClassVar[int] = 32

    @abstractmethod
    def compute(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features of each HxWx3 uint8 RGB image: float32, shape (len(images), len(names()))."""

    @abstractmethod
    def names(self) -> list[str]:
        """Column names, in the order ``compute`` returns them."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able parameters; ``get_extractor(kind, **params())`` rebuilds an equal extractor."""

    def parts(self) -> list[FeatureExtractor]:
        """The extractors ``extract`` computes and caches separately (itself, unless composite)."""
        return [self]

    def spec(self) -> dict[str, Any]:
        """What a bundle's ``config["features"]`` holds."""
        return {"kind": self.kind, "params": self.params()}


_KINDS: dict[str, type[FeatureExtractor]] = {}


def register_features(kind: str) -> Callable[[type[FeatureExtractor]], type[FeatureExtractor]]:
    """Class decorator registering a feature extractor under ``kind``."""

    def wrap(cls: type[FeatureExtractor]) -> type[FeatureExtractor]:
        if kind in _KINDS and _KINDS[kind] is not cls:
            raise ValueError(f"feature kind {kind!r} is registered twice")
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return wrap


def _load(kind: str) -> None:
    module = _PROVIDERS.get(kind)
    if kind in _KINDS or module is None:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise


def list_feature_kinds() -> list[str]:
    """Every kind that can be asked for, sorted (providers whose module exists are included)."""
    for kind in _PROVIDERS:
        _load(kind)
    return sorted(_KINDS)


def get_extractor(kind: str, **params: Any) -> FeatureExtractor:
    """An extractor of ``kind`` built from ``params``; ``ConfigError`` names the valid kinds."""
    _load(kind)
    if kind not in _KINDS:
        raise ConfigError(f"unknown feature kind {kind!r}; choose from: {', '.join(list_feature_kinds())}")
    try:
        return _KINDS[kind](**params)
    except TypeError as e:
        raise ConfigError(f"feature kind {kind!r}: bad parameters {sorted(params)} ({e})") from None


def from_spec(spec: dict[str, Any]) -> FeatureExtractor:
    """Rebuild an extractor from ``FeatureExtractor.spec()`` (a bundle's ``config["features"]``)."""
    if "kind" not in spec:
        raise ConfigError(f"feature settings {spec} lack a 'kind'")
    return get_extractor(spec["kind"], **spec.get("params", {}))


@register_features("both")
class Concat(FeatureExtractor):
    """Handcrafted and deep features side by side (each cached under its own key)."""

    def __init__(self, handcrafted: dict[str, Any] | None = None, deep: dict[str, Any] | None = None):
        self._parts = [get_extractor("handcrafted", **(handcrafted or {})),
                       get_extractor("deep", **(deep or {}))]

    def parts(self) -> list[FeatureExtractor]:
        return list(self._parts)

    def names(self) -> list[str]:
        return [n for p in self._parts for n in p.names()]

    def params(self) -> dict[str, Any]:
        return {p.kind: p.params() for p in self._parts}

    def compute(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([p.compute(images) for p in self._parts], axis=1)


from leukoscope.features.cache import extract  # noqa: E402  (needs the registry above)

__all__ = ["Concat", "FeatureExtractor", "extract", "from_spec", "get_extractor",
           "list_feature_kinds", "register_features"]
