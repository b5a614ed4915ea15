"""Scorers: fitted patient models that turn a bag of cells into one log-odds toward the positive class.

Every scorer answers per cell and per bag the same way: each cell gets a score (its log-odds as a
bag of one cell) and a weight within its bag, and the bag's decision is ``sum(weight * score)``.
For the linear methods the weights are ``1/n`` (the bag is scored by its mean cell); for attention
MIL they are the attention (the output layer is affine, so the attended mean of the cells' logits is
the bag's logit). So the same two numbers tell a report which cells drove a call, whatever the
method. Scorers are stored as named float tensors (safetensors) plus a small JSON spec: no pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from leukoscope.errors import BundleError

Tensors = dict[str, np.ndarray]


class Scorer(ABC):
    """A fitted patient model. ``types`` holds a cell-type index per cell, -1 where unknown."""

    kind: ClassVar[str] = ""

    @abstractmethod
    def bag(self, X: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-cell scores (log-odds toward positive) and weights (summing to 1) of one bag."""

    def decisions(self, X: np.ndarray, types: np.ndarray, patient: np.ndarray, n: int) -> np.ndarray:
        """The decision of each of ``n`` bags (cells tagged 0..n-1 by ``patient``); 0 for an empty one."""
        out = np.zeros(n)
        for p in np.unique(patient):
            rows = patient == p
            s, w = self.bag(X[rows], types[rows])
            out[p] = float(s @ w)
        return out

    def cell_scores(self, X: np.ndarray, types: np.ndarray) -> np.ndarray:
        """Each cell's log-odds as a bag of one cell."""
        return np.array([self.bag(X[i:i + 1], types[i:i + 1])[0][0] for i in range(len(X))])

    @abstractmethod
    def tensors(self) -> Tensors:
        """Everything fitted, as named float32 arrays."""

    def spec(self) -> dict[str, Any]:
        """The JSON part: which kind, and settings that are not arrays."""
        return {"kind": self.kind}


_KINDS: dict[str, Callable[[dict[str, Any], Tensors], Scorer]] = {}


def scorer_kind(kind: str) -> Callable[[type[Scorer]], type[Scorer]]:
    """Class decorator: ``load_scorer`` rebuilds scorers of this kind with ``cls.load(spec, tensors)``."""

    def wrap(cls: type[Scorer]) -> type[Scorer]:
        cls.kind = kind
        _KINDS[kind] = cls.load  # type: ignore[attr-defined]
        return cls

    return wrap


def need(tensors: Tensors, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Tensor ``name`` with this shape (None: any length), else a ``BundleError`` naming it."""
    t = tensors.get(name)
    if t is None:
        raise BundleError(f"weights: missing tensor {name!r}")
    if t.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, t.shape, strict=True)):
        raise BundleError(f"weights: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    if not np.isfinite(t).all():
        raise BundleError(f"weights: tensor {name!r} holds NaN or infinite values")
    return np.asarray(t, np.float64)


def prefixed(tensors: Tensors, prefix: str) -> Tensors:
    """The tensors under ``prefix.`` with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_scorer(spec: dict[str, Any], tensors: Tensors) -> Scorer:
    """Rebuild a scorer from its ``spec()`` and ``tensors()`` (a ``BundleError`` if they disagree)."""
    from leukoscope.models.patient import mil  # noqa: F401  (registers the "mil" kind)

    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in _KINDS:
        raise BundleError(f"aggregator.kind must be one of {', '.join(sorted(_KINDS))}, got {kind!r}")
    return _KINDS[str(kind)](spec, tensors)


@scorer_kind("linear")
@dataclass
class LinearScorer(Scorer):
    """Standardise, then a linear score: ``((x - mean) / scale) @ coef + intercept``; bag = mean cell."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def cell_scores(self, X: np.ndarray, types: np.ndarray | None = None) -> np.ndarray:
        return ((X - self.mean) / self.scale) @ self.coef + self.intercept

    def bag(self, X: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.cell_scores(X), np.full(len(X), 1.0 / max(len(X), 1))

    def decisions(self, X: np.ndarray, types: np.ndarray, patient: np.ndarray, n: int) -> np.ndarray:
        s = self.cell_scores(X)
        return np.bincount(patient, s, n) / np.maximum(np.bincount(patient, minlength=n), 1)

    def tensors(self) -> Tensors:
        return {"mean": self.mean, "scale": self.scale, "coef": self.coef,
                "intercept": np.array([self.intercept])}

    @classmethod
    def load(cls, spec: dict[str, Any], tensors: Tensors) -> LinearScorer:
        d = need(tensors, "coef", (None,)).shape[0]
        scale = need(tensors, "scale", (d,))
        if (scale <= 0).any():
            raise BundleError("weights: tensor 'scale' must be positive")
        return cls(need(tensors, "mean", (d,)), scale, need(tensors, "coef", (d,)),
                   float(need(tensors, "intercept", (1,))[0]))


@dataclass
class TypeHead:
    """Cell type of a cell from its embedding: standardise, then a multinomial linear layer."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (types, d)
    intercept: np.ndarray  # (types,)

    def proba(self, X: np.ndarray) -> np.ndarray:
        z = ((X - self.mean) / self.scale) @ self.coef.T + self.intercept
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.proba(X).argmax(axis=1) if len(X) else np.zeros(0, int)

    def tensors(self) -> Tensors:
        return {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept}

    @classmethod
    def load(cls, tensors: Tensors, n_types: int, d: int) -> TypeHead:
        return cls(need(tensors, "mean", (d,)), need(tensors, "scale", (d,)),
                   need(tensors, "coef", (n_types, d)), need(tensors, "intercept", (n_types,)))


#: The cell-type head is fitted on this many principal components of the standardised embeddings
#: (folded back into one linear layer over the embedding): 10x faster than on all 1,280 dimensions.
TYPE_HEAD_COMPONENTS = 128


def fit_type_head(X: np.ndarray, types: np.ndarray, n_types: int, C: float = 0.1) -> TypeHead:
    """A multinomial logistic regression on the typed cells (types never seen get a -30 bias)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-6
    S = (X - mean) / scale
    k = min(TYPE_HEAD_COMPONENTS, len(S) - 1, S.shape[1])
    project = PCA(k, random_state=0).fit(S).components_  # (k, d), orthonormal rows
    lr = LogisticRegression(C=C, max_iter=500).fit(S @ project.T, types)
    coef = np.zeros((n_types, X.shape[1]))
    intercept = np.full(n_types, -30.0)
    seen = lr.classes_.astype(int)
    if len(seen) == 2:  # sklearn keeps one row for two classes: log-odds of the second
        coef[seen[1]], intercept[seen[1]] = lr.coef_[0] @ project, lr.intercept_[0]
        intercept[seen[0]] = 0.0
    else:
        coef[seen], intercept[seen] = lr.coef_ @ project, lr.intercept_
    return TypeHead(mean, scale, coef, intercept)


@scorer_kind("composition")
@dataclass
class CompositionScorer(Scorer):
    """A linear model on a bag's shares of cell types (one-hot types, averaged: the bag's mean cell).

    A bag with technologist-typed cells is scored on those (its other cells get a score, weight 0);
    a bag with none takes for every cell the type the head predicts from its embedding.
    """

    linear: LinearScorer
    head: TypeHead | None

    def types(self, X: np.ndarray, types: np.ndarray) -> np.ndarray:
        """Known types, and the head's prediction for the others (-1 left where there is no head)."""
        t = np.asarray(types, int).copy()
        unknown = t < 0
        if unknown.any() and self.head is not None:
            t[unknown] = self.head.predict(X[unknown])
        return t

    def cell_scores(self, X: np.ndarray, types: np.ndarray) -> np.ndarray:
        t = self.types(X, types)
        s = self.linear.cell_scores(np.eye(len(self.linear.coef))[t.clip(0)])
        return np.where(t >= 0, s, np.nan)

    def bag(self, X: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.cell_scores(X, types)
        use = np.asarray(types) >= 0
        if not use.any():
            use = ~np.isnan(s)
        if not use.any():
            raise ValueError("a bag of cells of unknown type and no cell-type head to type them")
        return s, use / use.sum()

    def decisions(self, X: np.ndarray, types: np.ndarray, patient: np.ndarray, n: int) -> np.ndarray:
        out = np.zeros(n)
        for p in np.unique(patient):
            s, w = self.bag(X[patient == p], types[patient == p])
            out[p] = float(np.nan_to_num(s) @ w)
        return out

    def tensors(self) -> Tensors:
        out = {f"linear.{k}": v for k, v in self.linear.tensors().items()}
        if self.head is not None:
            out.update({f"head.{k}": v for k, v in self.head.tensors().items()})
        return out

    @classmethod
    def load(cls, spec: dict[str, Any], tensors: Tensors) -> CompositionScorer:
        linear = LinearScorer.load(spec, prefixed(tensors, "linear"))
        head = prefixed(tensors, "head")
        d = head["mean"].shape[0] if "mean" in head else 0
        return cls(linear, TypeHead.load(head, len(linear.coef), d) if head else None)
