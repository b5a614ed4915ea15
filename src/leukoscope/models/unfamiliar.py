"""Unfamiliarity: how unlike a model's training data a cell is (higher = less familiar), and the
threshold above which a call is withheld as "unfamiliar".

A ``Scorer`` is fitted on the train side (embeddings, labels) and its threshold is set on the
validation side: the ``1 - target`` quantile of the in-distribution validation scores, so about
``target`` of familiar cells are flagged by mistake (the target is recorded). Methods:

- ``msp``: 1 - the calibrated top probability; ``energy``: -T logsumexp(logits / T). Need no file,
  but confident mistakes on a foreign cell stay confident (DeepAPL blasts vs a PBC model: AUC 0.50).
- ``mahalanobis``: smallest class-conditional Mahalanobis distance (class means, one shared
  covariance with shrinkage) of the normalised embedding.
- ``relative_mahalanobis`` (Ren et al. 2021): that distance minus the Mahalanobis distance to one Gaussian
  of all training embeddings, so directions in which every training cell varies weigh less.
- ``knn``: 1 - the cosine similarity of the L2-normalised embedding to its k-th nearest training
  embedding (a float16 reference matrix, at most ``MAX_REFERENCE`` rows, subsampled per class).
- ``exposure`` (outlier exposure, Hendrycks et al. 2019; ``train --outliers``): a logistic regression in
  the normalised embedding taught examples of cells the model must not call (say, another lab's blasts for
  a model of normal cells) against the training cells and any familiar cells of the outliers' own lab,
  its regularisation chosen on the outliers' validation side. Score: the larger of its log-odds and the
  Mahalanobis distance, each scaled by the spread of the familiar validation scores and offset at a
  quantile of them (``EXPOSURE`` in config.json), so cells unlike both the training cells and the
  outliers are still flagged by the distance (the backstop flags ``BACKSTOP_TARGET`` of familiar cells).

``DEFAULT_METHOD`` is ``mahalanobis``, chosen by benchmarks/unfamiliar.py at full settings (the
default recipe, EfficientNet-Lite0 at 128 px, every method fitted on the same embeddings; 2 cores, load
~5-10), ROC AUC of foreign cells against familiar ones:

====================================================  ===========  ==========  =========  =====  ======
pair                                                  mahalanobis  relative    knn (k=5)  msp    energy
====================================================  ===========  ==========  =========  =====  ======
PBC model: DeepAPL blasts vs DeepAPL's known types    0.727        0.736       0.662      0.394  0.349
ALL-IDB2 model: C-NMC cells vs its own test side      0.999        0.999       0.995      0.455  0.247
aria_all model: PBC cells vs its own test side        0.999        0.998       1.000      0.829  0.695
====================================================  ===========  ==========  =========  =====  ======

Mahalanobis is best on the hard pair (a new type from a new lab, against known types from the same new lab)
and ties elsewhere; it stores two small tensors instead of a reference matrix. Relative Mahalanobis gains
0.009 there but flags more of ALL-IDB2's own test side (16 % vs 13.5 %): an option, not the default. The
same scores on handcrafted features, on both side by side, or the rank mean of two do worse on the hard
pair (0.37-0.72): DeepAPL's blasts are no farther from PBC than its monocytes, myelocytes and promyelocytes
(Mahalanobis AUC 0.49, 0.49, 0.46 against each; cells of leukaemic patients) and giant thrombocytes
(0.38). The confidence scores fail where it matters: foreign cells are called *more* confidently
(AUC < 0.5). Patient bundles keep ``knn`` (their labels are diagnoses, not cell types, so class means say
little; ``patients.train``).

Networks give their penultimate (pooled) features; classical bundles their feature rows, which the
scorer standardises with the training mean / std before normalising (``standardise``). Tensors are
stored with safetensors (never pickle); the settings go in the bundle's config under ``unfamiliar``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.errors import BundleError, DataError

METHODS = ("knn", "mahalanobis", "relative_mahalanobis", "msp", "energy", "exposure")
DEFAULT_METHOD = "mahalanobis"
DEFAULT_K = 5
#: Target share of familiar validation cells flagged (the threshold is their 95th percentile).
DEFAULT_TARGET = 0.05
#: Reference rows kept for ``knn`` (a float16 matrix: 5000 x 1280 is 12.8 MB).
MAX_REFERENCE = 5000
#: Ridge added to the shared covariance (relative to its mean variance) so it can be inverted.
SHRINKAGE = 0.1
#: ``exposure``: the regularisation grid of its logistic regression, and the share of familiar validation
#: cells its Mahalanobis backstop alone flags.
EXPOSURE_C = (0.01, 0.1, 1.0, 10.0)
BACKSTOP_TARGET = 0.005
#: ``exposure``'s numbers in config.json: the regression's offset; the offsets and scales of its two parts.
EXPOSURE = ("offset", "centre", "scale", "backstop", "backstop_scale", "C")
#: Tensors each method stores (``standardise`` adds ``mean`` and ``std``).
TENSORS = {"knn": ("reference",), "mahalanobis": ("means", "precision"),
           "relative_mahalanobis": ("means", "precision", "background_mean", "background_precision"),
           "msp": (), "energy": (), "exposure": ("means", "precision", "direction")}
#: Each stored tensor's rank (2 unless named): one row per vector, or a d x d precision.
SHAPES = {"background_mean": 1, "mean": 1, "std": 1}
#: Tensors of a fixed number of rows (``exposure``'s one direction; others: a row per class or cell).
ROWS = {"direction": 1}


class ScorerMismatch(BundleError, ValueError):
    """Embeddings of another width than the scorer's tensors: a ``ValueError`` as every misfit of a
    scorer's file is, and a ``BundleError`` so that the command using the bundle says it in one line."""


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Scorer:
    """A fitted unfamiliarity score and its threshold (see the module docstring)."""

    method: str
    threshold: float = float("inf")
    k: int = DEFAULT_K
    temperature: float = 1.0
    target: float = DEFAULT_TARGET
    standardise: bool = False
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    #: ``exposure``'s numbers (``EXPOSURE``); empty for the other methods.
    exposure: dict[str, float] = field(default_factory=dict)
    #: Where the tensors came from, named in ``score``'s errors (``load_scorer`` sets the path).
    source: str = "unfamiliar.safetensors"

    @functools.cached_property
    def _reference(self) -> np.ndarray:
        """``knn``'s float16 reference as float32, cast once (in every call it was a tenth of the
        score's time: 857 x 1280 rows, batches of 64); the tensors are fixed once fitted or loaded."""
        return self.tensors["reference"].astype(np.float32)

    def _embed(self, emb: np.ndarray) -> np.ndarray:
        x = np.asarray(emb, np.float32)
        width = next(iter(self.tensors.values())).shape[-1] if self.tensors else x.shape[-1]
        if x.shape[-1] != width:  # tensors of another model (a copied file) cannot score these
            raise ScorerMismatch(f"{self.source}: tensors of width {width}, but the model gives embeddings "
                                 f"of width {x.shape[-1]} (a file from another bundle?)")
        if self.standardise:
            x = (x - self.tensors["mean"]) / self.tensors["std"]
        return _normalise(x)

    def score(self, embeddings: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
        """Unfamiliarity per row (higher = less like the training data)."""
        z = np.asarray(logits, np.float64) / self.temperature
        if self.method in ("msp", "energy"):  # scipy only here: the default kNN score runs without it
            from scipy.special import logsumexp, softmax

            if self.method == "msp":
                return np.asarray(1.0 - softmax(z, axis=1).max(axis=1))
            return np.asarray(-self.temperature * logsumexp(z, axis=1))
        if embeddings is None:
            raise ValueError(f"method {self.method!r} needs embeddings")
        x = self._embed(embeddings)
        if self.method in ("mahalanobis", "relative_mahalanobis", "exposure"):
            t = self.tensors
            m = _mahalanobis(x, t["means"], t["precision"]).min(axis=1)
            if self.method == "relative_mahalanobis":
                m -= _mahalanobis(x, t["background_mean"][None], t["background_precision"])[:, 0]
            if self.method == "exposure":
                p = self.exposure
                odds = (x @ t["direction"][0]).astype(np.float64) + p["offset"]
                m = np.maximum((odds - p["centre"]) / p["scale"], (m - p["backstop"]) / p["backstop_scale"])
            return np.asarray(m, np.float64)
        ref = self._reference
        sims = np.concatenate([x[i:i + 256] @ ref.T for i in range(0, len(x), 256)]) if len(x) else \
            np.zeros((0, len(ref)), np.float32)
        k = min(self.k, ref.shape[0])
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        return np.asarray(1.0 - kth, np.float64)

    @property
    def needs_embeddings(self) -> bool:
        return self.method not in ("msp", "energy")

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """Past the threshold, or no score at all (NaN: a blank image's features cannot be measured,
        and such an image is exactly what the flag is for)."""
        return ~(np.asarray(scores) <= self.threshold)

    def config(self) -> dict[str, Any]:
        """The settings for config.json's ``unfamiliar`` key."""
        return {"method": self.method, "threshold": float(self.threshold), "k": self.k,
                "temperature": self.temperature, "target_false_flag_rate": self.target,
                "standardise": self.standardise} | ({"exposure": self.exposure} if self.exposure else {})

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, str(path))


def fit_scorer(train_emb: np.ndarray, train_y: np.ndarray, method: str = DEFAULT_METHOD, *,
               k: int = DEFAULT_K, temperature: float = 1.0, standardise: bool = False,
               seed: int = 0) -> Scorer:
    """A scorer fitted on the train side's embeddings and labels (threshold not yet set)."""
    if method not in METHODS or method == "exposure":  # exposure needs outliers: fit_exposure
        raise ValueError(f"unfamiliarity method {method!r} is not one of {', '.join(METHODS[:-1])}")
    s = Scorer(method, k=k, temperature=float(temperature), standardise=standardise)
    if method in ("msp", "energy"):
        return s
    x, y = _measurable(np.asarray(train_emb, np.float32), np.asarray(train_y))
    if standardise:
        s.tensors["mean"] = x.mean(axis=0)
        s.tensors["std"] = np.maximum(x.std(axis=0), 1e-6).astype(np.float32)
    x = s._embed(x)
    if method == "knn":
        keep = _subsample(y, MAX_REFERENCE, seed)
        s.tensors["reference"] = x[keep].astype(np.float16)
        return s
    labels = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in labels]).astype(np.float32)
    s.tensors["means"] = means
    s.tensors["precision"] = _precision(x - means[np.searchsorted(labels, y)])
    if method == "relative_mahalanobis":
        s.tensors["background_mean"] = x.mean(axis=0)
        s.tensors["background_precision"] = _precision(x - x.mean(axis=0))
    return s


def _measurable(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``x`` (and their labels) with every value finite: those the fit uses.

    A row with a NaN (a grey or blank image: 81 of the 83 handcrafted features cannot be measured) has no
    place in the embedding space, and ``score`` gives it NaN (flagged) anyway. Left out rather than
    imputed: placed at the mean, such rows would pull the class means together and shrink the covariance
    the distances are measured with. Colour cells have every feature finite (200 PBC cells of 8 classes).
    """
    keep = np.isfinite(x).all(axis=1)
    if not keep.any():
        raise DataError(f"unfamiliarity score: none of the {len(x)} training cells has measurable features "
                        f"(grey or blank images?)")
    return x[keep], y[keep]


def _finite(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` with every value finite (those ``_measurable`` keeps)."""
    x = np.asarray(x, np.float32)
    return x[np.isfinite(x).all(axis=1)]


def _precision(centred: np.ndarray) -> np.ndarray:
    """The inverse of the covariance of ``centred`` rows, with ``SHRINKAGE`` so it can be inverted (towards
    the unit matrix when the rows do not vary at all: one training cell per class, or identical ones)."""
    cov = centred.T @ centred / max(len(centred) - 1, 1)
    spread = float(np.trace(cov)) / cov.shape[0]
    cov += SHRINKAGE * (spread if spread > 0 else 1.0) * np.eye(cov.shape[0], dtype=cov.dtype)
    return np.linalg.inv(cov).astype(np.float32)


def _mahalanobis(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``x`` to each of ``means`` (rows x means).

    As ``x' P x - 2 x' P m + m' P m``: one product ``x @ P`` per call instead of one per mean (a
    quarter of predict's time with 4 classes), taken about the means' centre so the float32 terms
    stay near the distances they sum to (relative difference to the direct form ~1e-7).
    """
    centre = means.mean(axis=0)
    x, means = x - centre, means - centre
    pm = precision @ means.T
    return (np.einsum("nd,nd->n", x @ precision, x, dtype=np.float64)[:, None]
            - 2 * (x @ pm).astype(np.float64) + np.einsum("cd,dc->c", means, pm, dtype=np.float64)[None, :])


def _subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of at most ``n`` rows, each class keeping its share (all rows when there are fewer)."""
    if len(y) <= n:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    parts = [rng.permutation(np.flatnonzero(y == c))[:max(1, round(n * np.mean(y == c)))]
             for c in np.unique(y)]
    return np.sort(np.concatenate(parts))


def set_threshold(scorer: Scorer, val_scores: np.ndarray, target: float = DEFAULT_TARGET) -> Scorer:
    """The threshold: the ``1 - target`` quantile of familiar validation cells' finite scores.

    A cell with no score (NaN: features that cannot be measured) is flagged whatever the threshold, so it
    does not move it; with none finite there is no threshold to set, which is an error rather than a NaN
    that the bundle could not load."""
    scores = np.asarray(val_scores, np.float64)
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        raise DataError(f"unfamiliarity threshold: none of the {len(scores)} validation cells has a finite "
                        f"score (grey or blank images?)")
    scorer.target = target
    scorer.threshold = float(np.quantile(finite, 1.0 - target))
    return scorer


def fit_unfamiliar(train_emb: np.ndarray, train_y: np.ndarray, val_emb: np.ndarray,
                   val_logits: np.ndarray, temperature: float, *, method: str = DEFAULT_METHOD,
                   standardise: bool = False, target: float = DEFAULT_TARGET, seed: int = 0) -> Scorer:
    """Fit on the train side, threshold on the validation side (what training calls)."""
    s = fit_scorer(train_emb, train_y, method, temperature=temperature, standardise=standardise, seed=seed)
    return set_threshold(s, s.score(val_emb, val_logits), target)


def fit_exposure(train_emb: np.ndarray, train_y: np.ndarray, val_emb: np.ndarray, val_logits: np.ndarray,
                 temperature: float, outliers: dict[str, np.ndarray], others: dict[str, np.ndarray], *,
                 standardise: bool = False, target: float = DEFAULT_TARGET) -> Scorer:
    """The ``exposure`` scorer: Mahalanobis fitted as ``fit_scorer`` does, the regression fitted on the
    train sides of ``outliers`` (embeddings by side: ``train``, ``val``) against the training cells and the
    train side of ``others`` (familiar cells of the outliers' lab; may be empty), its C the one with the
    best validation AUC of outliers against the validation cells and ``others``' validation side."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    if not len(_finite(val_emb)):
        raise DataError("--outliers: the run has no validation cells with measurable features to set the "
                        "score's threshold on")
    s = fit_scorer(train_emb, train_y, "mahalanobis", temperature=temperature, standardise=standardise)
    s.method = "exposure"

    def rows(side: str, familiar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outliers (1) and familiar cells (0) of one side, embedded as the score reads them."""
        bad = s._embed(_finite(outliers[side]))
        good = s._embed(_finite(np.concatenate([familiar, others[side]]) if side in others else familiar))
        return np.concatenate([bad, good]), np.r_[np.ones(len(bad)), np.zeros(len(good))]

    (X, y), (Xv, yv) = rows("train", train_emb), rows("val", val_emb)
    fits = [LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(X, y) for c in EXPOSURE_C]
    aucs = [roc_auc_score(yv, f.decision_function(Xv)) for f in fits]
    best = int(np.argmax(aucs))  # the first of equals: the strongest regularisation
    s.tensors["direction"] = fits[best].coef_.astype(np.float32)
    offset = float(fits[best].intercept_[0])
    x = s._embed(_finite(val_emb))
    odds = x @ s.tensors["direction"][0] + offset
    dist = _mahalanobis(x, s.tensors["means"], s.tensors["precision"]).min(axis=1)
    s.exposure = {"offset": offset, "centre": float(np.quantile(odds, 1 - target)),
                  "scale": float(max(odds.std(), 1e-6)),
                  "backstop": float(np.quantile(dist, 1 - BACKSTOP_TARGET)),
                  "backstop_scale": float(max(dist.std(), 1e-6)), "C": EXPOSURE_C[best]}
    return set_threshold(s, s.score(val_emb, val_logits), target)


def load_scorer(path: Path, settings: dict[str, Any]) -> Scorer:
    """The scorer a bundle stored: ``settings`` from its config (checked), tensors from ``path``.

    Raises ``ValueError`` naming what is missing or misshapen (the bundle turns it into a ``BundleError``).
    """
    s = Scorer(settings["method"], threshold=float(settings["threshold"]),
               k=int(settings.get("k", DEFAULT_K)),
               temperature=float(settings.get("temperature", 1.0)),
               target=float(settings.get("target_false_flag_rate", DEFAULT_TARGET)),
               standardise=bool(settings.get("standardise", False)), source=str(path))
    if s.method == "exposure":  # bundle.format checked the numbers
        s.exposure = {k: float(settings["exposure"][k]) for k in EXPOSURE}
    need = TENSORS[s.method] + (("mean", "std") if s.standardise else ())
    if not need:
        return s
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not Path(path).is_file():
        raise ValueError(f"{path}: missing (config.json's 'unfamiliar' needs it)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, TypeError) as e:  # truncated, corrupt, not safetensors, bfloat16
        raise ValueError(f"{path}: cannot read ({' '.join(str(e).split())})") from None
    missing = [n for n in need if n not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {', '.join(missing)}")
    shapes = ", ".join(f"{n} {tensors[n].shape} {tensors[n].dtype}" for n in need)
    if any(tensors[n].ndim != SHAPES.get(n, 2) or tensors[n].dtype.kind != "f" or not tensors[n].size
           or (n in ROWS and tensors[n].shape[0] != ROWS[n]) for n in need):
        raise ValueError(f"{path}: tensors of the wrong rank, type or size ({shapes}; floating point, "
                         f"not empty{', direction one row' if 'direction' in need else ''})")
    dims = {tensors[n].shape[-1] for n in need}
    square = all(tensors[n].shape[0] == tensors[n].shape[1] for n in need if "precision" in n)
    if len(dims) != 1 or not square or any(not np.isfinite(tensors[n]).all() for n in need):
        raise ValueError(f"{path}: tensors of unequal width, a precision that is not square, or NaN / "
                         "infinite values")
    if s.standardise and (tensors["std"] <= 0).any():  # fitting keeps it >= 1e-6: every score would be NaN
        raise ValueError(f"{path}: a standard deviation that is not > 0")
    s.tensors = {n: tensors[n] for n in need}
    return s
