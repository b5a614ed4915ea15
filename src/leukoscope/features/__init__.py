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
(imported inside the module, which is only imported when the kind is first asked for: the
``KINDS`` registry declares it). ``both`` is the concatenation of handcrafted and deep: each part is computed
and cached under its own key, then the columns are joined (``Concat.parts``).

``extract(m, kind, cache=None, **params)`` (``features/cache.py``) is the one entry point the
leaderboard, the CLI and the bundles use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from leukoscope.errors import ConfigError
from leukoscope.registry import Registry


class FeatureExtractor(ABC):
    """Base class of a feature kind; subclasses set ``kind`` via ``@register_features``."""

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1
    #: Worker processes may compute it (pure per-image Python / numpy work); otherwise batches are
    #: computed in turn (the kind spreads one over the cores) while a thread decodes the next.
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


class PerImageFeatures(FeatureExtractor):
    """A kind computed one image at a time on a working copy of ``size`` pixels, its one parameter."""

    #: column names (``names``) and the working size used when none is given
    columns: ClassVar[list[str]] = []
    default_size: ClassVar[int] = 160

    def __init__(self, size: int | None = None):
        size = self.default_size if size is None else size
        if not (isinstance(size, int) and not isinstance(size, bool) and 32 <= size <= 1024):
            from leukoscope.errors import ConfigError

            raise ConfigError(f"{self.kind} features: size must be a whole number of pixels in 32..1024, "
                              f"got {size!r}")
        self.size = size

    @abstractmethod
    def of_image(self, image: np.ndarray) -> np.ndarray:
        """The features of one HxWx3 uint8 RGB image."""

    def names(self) -> list[str]:
        return list(self.columns)

    def params(self) -> dict[str, Any]:
        return {"size": self.size}

    def compute(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, len(self.columns)), np.float32)
        return np.stack([self.of_image(np.asarray(im)) for im in images])


#: Every kind; those of other modules are declared (kind -> module) and imported on first use, so
#: listing kinds imports neither scipy nor torch.
KINDS: Registry[type[FeatureExtractor]] = Registry(
    "feature kind", {"handcrafted": "leukoscope.features.handcrafted", "deep": "leukoscope.features.deep",
                     "colour": "leukoscope.features.colour"})


def register_features(kind: str) -> Callable[[type[FeatureExtractor]], type[FeatureExtractor]]:
    """Class decorator registering a feature extractor under ``kind``."""

    def wrap(cls: type[FeatureExtractor]) -> type[FeatureExtractor]:
        cls.kind = kind
        return KINDS.register(kind)(cls)

    return wrap


def list_feature_kinds() -> list[str]:
    """Every kind that can be asked for, sorted; imports no extractor."""
    return sorted(KINDS.names())


def get_extractor(kind: str, **params: Any) -> FeatureExtractor:
    """An extractor of ``kind`` built from ``params``; ``ConfigError`` names the valid kinds."""
    cls = KINDS[kind]
    try:
        return cls(**params)
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
           "KINDS", "list_feature_kinds", "register_features"]
