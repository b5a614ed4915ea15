"""Patient-level methods, each a registered model of family ``patient``.

A method fits scorers (``scorers.py``) on the bags of some training patients, one per value of its
regularisation grid; the protocol (``protocol.py``) picks the value by an inner patient-grouped CV.
Every method is strongly regularised: 82 patients, 1,280 embedding dimensions.

- ``cell-logodds``: cells inherit their patient's label; a logistic regression on cell embeddings
  (each patient weighs the same, classes balanced) scores cells; a patient is the mean cell log-odds.
- ``mean-embedding``: a patient is the mean of its cell embeddings; logistic regression on those.
- ``attention-mil``: gated attention MIL on the cell embeddings (``mil.py``).
- ``composition``: a patient is its shares of cell types (``scorers.CompositionScorer``); the
  technologist's types where there are any, else those a cell-type head predicts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from leukoscope.models.patient.scorers import CompositionScorer, LinearScorer, Scorer, fit_type_head
from leukoscope.models.registry import get_model, register_model

#: Inverse regularisation strengths searched by the inner CV, strongest first (the one-SE rule leans
#: to it); the cell grid is the researcher's (scratch/deepapl/FINDINGS.md).
CELL_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
PATIENT_GRID = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class Cells:
    """Cells of some patients: embeddings, type index (-1 unknown), patient index 0..n-1, labels."""

    X: np.ndarray
    types: np.ndarray
    patient: np.ndarray
    y: np.ndarray  # one 0/1 label per patient
    n_types: int

    def means(self, Z: np.ndarray) -> np.ndarray:
        """Per-patient mean of a per-cell matrix."""
        n = len(self.y)
        out = np.zeros((n, Z.shape[1]))
        np.add.at(out, self.patient, Z)
        return out / np.maximum(np.bincount(self.patient, minlength=n), 1)[:, None]


class PatientMethod(ABC):
    """Fits one scorer per grid value on the cells of the training patients."""

    name: ClassVar[str] = ""
    grid: tuple[Any, ...] = (None,)

    def __init__(self, seed: int = 0, **settings: Any):
        self.seed = seed
        self.settings = settings

    @abstractmethod
    def fit(self, cells: Cells, grid: Sequence[Any]) -> dict[Any, Scorer]:
        """One fitted scorer per value of ``grid``."""


def _scaler(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return Z.mean(axis=0), Z.std(axis=0) + 1e-6


def _patient_lr(Z: np.ndarray, y: np.ndarray, grid: Sequence[float], seed: int) -> dict[Any, LinearScorer]:
    """Logistic regressions on standardised patient rows (dual liblinear: patients << dimensions)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = _scaler(Z)
    S = (Z - mean) / scale
    out = {}
    for C in grid:
        lr = LogisticRegression(C=C, solver="liblinear", dual=S.shape[1] > S.shape[0], max_iter=1000,
                                class_weight="balanced", random_state=seed).fit(S, y)
        out[C] = LinearScorer(mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))
    return out


class CellLogOdds(PatientMethod):
    """Cells inherit the patient's label; cell LR; patient = mean cell log-odds."""

    name = "cell-logodds"
    grid = CELL_GRID

    def fit(self, cells: Cells, grid: Sequence[Any]) -> dict[Any, Scorer]:
        from sklearn.linear_model import LogisticRegression

        mean, scale = _scaler(cells.X)
        S = (cells.X - mean) / scale
        yc = cells.y[cells.patient]
        w = 1.0 / np.bincount(cells.patient)[cells.patient]  # each patient weighs the same
        for c in (0, 1):
            w[yc == c] /= w[yc == c].sum()  # and each class
        w *= len(w) / w.sum()
        lr = LogisticRegression(max_iter=300, tol=1e-4, warm_start=True)
        out: dict[Any, Scorer] = {}
        for C in sorted(grid):  # strongest first, each fit warm-started from the last
            lr.set_params(C=C).fit(S, yc, sample_weight=w)
            out[C] = LinearScorer(mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))
        return out


class MeanEmbedding(PatientMethod):
    """Mean-pooled cell embeddings per patient, then logistic regression."""

    name = "mean-embedding"
    grid = PATIENT_GRID

    def fit(self, cells: Cells, grid: Sequence[Any]) -> dict[Any, Scorer]:
        return dict(_patient_lr(cells.means(cells.X), cells.y, grid, self.seed))


class AttentionMIL(PatientMethod):
    """Gated attention multiple-instance learning on frozen cell embeddings."""

    name = "attention-mil"

    def fit(self, cells: Cells, grid: Sequence[Any]) -> dict[Any, Scorer]:
        from leukoscope.models.patient.mil import fit_mil

        bags = [cells.X[cells.patient == p] for p in range(len(cells.y))]
        return {g: fit_mil(bags, cells.y, seed=self.seed, **self.settings) for g in grid}


class Composition(PatientMethod):
    """Shares of cell types per patient (technologist's, else predicted), then LR."""

    name = "composition"
    grid = PATIENT_GRID

    def fit(self, cells: Cells, grid: Sequence[Any]) -> dict[Any, Scorer]:
        typed = cells.types >= 0
        untyped = np.bincount(cells.patient, weights=typed, minlength=len(cells.y)) == 0
        head = None
        if untyped.any():  # some patient has no typed cell: its composition is predicted
            if not typed.any():
                raise ValueError("composition needs technologist-typed cells to learn cell types from")
            head = fit_type_head(cells.X[typed], cells.types[typed], cells.n_types)
        probe = CompositionScorer(LinearScorer(np.zeros(cells.n_types), np.ones(cells.n_types),
                                               np.zeros(cells.n_types), 0.0), head)
        t = probe.types(cells.X, cells.types)
        use = typed | untyped[cells.patient]
        onehot = np.eye(cells.n_types)[t[use].clip(0)]
        sub = Cells(onehot, t[use], cells.patient[use], cells.y, cells.n_types)
        return {C: CompositionScorer(lin, head)
                for C, lin in _patient_lr(sub.means(onehot), cells.y, grid, self.seed).items()}


def _register(cls: type[PatientMethod]) -> None:
    def build(**settings: Any) -> PatientMethod:
        return cls(**settings)

    build.__doc__ = (cls.__doc__ or "").strip() or cls.name
    register_model(cls.name, family="patient")(build)


for _cls in (CellLogOdds, MeanEmbedding, AttentionMIL, Composition):
    _register(_cls)


def get_method(name: str, **settings: Any) -> PatientMethod:
    """The patient method registered as ``name`` (a ``ConfigError`` lists the choices)."""
    from leukoscope.errors import ConfigError
    from leukoscope.models.registry import list_models

    spec = get_model(name)
    if spec.family != "patient":
        raise ConfigError(f"--model {name!r} is not a patient-level method; choose from: "
                          f"{', '.join(list_models(family='patient'))}")
    method: PatientMethod = spec.build(**settings)
    return method
