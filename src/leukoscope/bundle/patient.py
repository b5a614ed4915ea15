"""The ``patient`` bundle family: a patient method fitted on a cohort, and ``diagnose``.

Weights are one safetensors file of float tensors (``aggregator.*``: the patient scorer; ``celltype.*``:
the cell-type head), everything else is JSON in config.json: the frozen embedding network's settings
(``features``), the scorer's kind, the decision threshold and Platt calibration fixed by the inner CV,
the fewest cells a call needs (``min_cells``), the cell-type names. Nothing on disk runs code. Optional,
as for cell bundles: ``unfamiliar.safetensors`` + config key ``unfamiliar``, the unfamiliarity score on the
frozen cell embeddings (``patients.train.cell_unfamiliarity``); ``diagnose`` leaves the cells it flags out
of the call (why: ``patient_call``). A bundle written without it loads and flags no cell.

``predict_proba(images)`` keeps the one bundle contract: each image is a cell, scored as a bag of one
cell, so predict / evaluate / serve work unchanged. ``diagnose(cells, subject)`` is the patient call.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukoscope.bundle.base import Bundle, bundle_family
from leukoscope.bundle.format import (
    CONFIG,
    INPUT_SIZES,
    ONNX,
    ONNX_DIGESTS,
    one_line,
    onnx_digests,
    read_config,
)
from leukoscope.bundle.patient_call import CellEvidence, PatientCall
from leukoscope.bundle.writing import write_json
from leukoscope.errors import BundleError, ConfigError
from leukoscope.models.patient.scorers import Scorer, Tensors, TypeHead, load_scorer, prefixed
from leukoscope.probability import sigmoid

if TYPE_CHECKING:  # the feature registry and the cohort reader (pandas) load only when used
    from leukoscope.features import FeatureExtractor

WEIGHTS = "patient.safetensors"
#: Resamples of the patient's cells for the interval on its probability.
BOOTSTRAP_CELLS = 200
INTERVAL_METHOD = (f"bootstrap over the patient's cells ({BOOTSTRAP_CELLS} resamples, 2.5-97.5 "
                   "percentiles): how much the call depends on which cells were imaged")
Cell = str | Path | np.ndarray


def save_weights(folder: Path, scorer: Scorer, head: TypeHead) -> None:
    from safetensors.numpy import save_file

    tensors = {f"aggregator.{k}": np.ascontiguousarray(v) for k, v in scorer.tensors().items()}
    tensors |= {f"celltype.{k}": np.ascontiguousarray(v) for k, v in head.tensors().items()}
    save_file(tensors, str(folder / WEIGHTS))


def _number(config: dict[str, Any], key: str, cfg: Path) -> float:
    v = config.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool) or not np.isfinite(v):
        raise BundleError(f"{cfg}: {key} must be a finite number, got {v!r}")
    return float(v)


def _extractor(features: Any, cfg: Path) -> FeatureExtractor:
    """The frozen embedding network of config ``features``; a tampered value is one line naming config.json
    and the setting, never a traceback, nor an input size that exhausts memory at the first cell."""
    from leukoscope.features import from_spec

    if not (isinstance(features, dict) and features.get("kind") == "deep"):  # what the scorer was fitted on
        raise BundleError(f'{cfg}: features must be an object {{"kind": "deep", "params": {{...}}}}, '
                          f"got {reprlib.repr(features)}")
    params = features.get("params", {})
    if not isinstance(params, dict):
        raise BundleError(f"{cfg}: features.params must be a JSON object, got {reprlib.repr(params)}")
    (lo, hi), size = INPUT_SIZES, params.get("input_size", INPUT_SIZES[0])  # absent: the network's default
    if not (isinstance(size, int) and not isinstance(size, bool) and lo <= size <= hi):
        raise BundleError(f"{cfg}: features.params.input_size must be an integer in {lo}..{hi} (as for "
                          f"network bundles), got {reprlib.repr(size)}")
    try:
        return from_spec(features)
    except ConfigError as e:
        raise BundleError(f"{cfg}: features: {one_line(e)}") from None


def overview_skip(img: np.ndarray) -> str | None:
    """Why a decoded image is skipped as a whole-field overview, not a cell (None: a cell), by the cohort
    reader's rule (``Header.overview``): the one test ``diagnose`` and ``/api/patient`` apply."""
    from leukoscope.data.cohort import Header

    head = Header(img.shape[1], img.shape[0])
    return f"whole-field overview ({head.width}x{head.height}), not a cell" if head.overview else None


@bundle_family("patient")
class PatientBundle(Bundle):
    """A patient-level model: frozen cell embeddings, a patient scorer, a cell-type head."""

    weight_files = (WEIGHTS,)

    def __init__(self, path: Path, config: dict[str, Any], scorer: Scorer, head: TypeHead):
        super().__init__(path, config)
        cfg = self.path / CONFIG
        self.scorer, self.head = scorer, head
        self.positive = str(config.get("positive"))
        if self.positive not in self.classes or len(self.classes) != 2:
            raise BundleError(f"{cfg}: positive must be one of two classes {self.classes}, "
                              f"got {config.get('positive')!r}")
        platt = config.get("platt")
        if not (isinstance(platt, list) and len(platt) == 2
                and all(isinstance(v, int | float) and np.isfinite(v) for v in platt)):
            raise BundleError(f"{cfg}: platt must be two finite numbers [a, b], got {platt!r}")
        self.platt = (float(platt[0]), float(platt[1]))
        self.threshold = _number(config, "threshold", cfg)
        self.min_cells = int(_number(config, "min_cells", cfg))
        types = config.get("cell_types")
        if not (isinstance(types, list) and types and all(isinstance(t, str) for t in types)):
            raise BundleError(f"{cfg}: cell_types must be a list of names, got {types!r}")
        self.cell_types = list(types)
        self.extractor = _extractor(config.get("features"), cfg)

    @classmethod
    def load(cls, path: Path, config: dict[str, Any]) -> PatientBundle:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        weights = Path(path) / WEIGHTS
        if not weights.is_file():
            raise BundleError(f"{path}: patient bundle without {WEIGHTS}")
        try:
            tensors: Tensors = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise BundleError(f"{weights}: cannot read ({e})") from None
        try:
            scorer = load_scorer(config.get("aggregator", {}), prefixed(tensors, "aggregator"))
            n_types = len(config.get("cell_types") or [])
            head_t = prefixed(tensors, "celltype")
            head = TypeHead.load(head_t, n_types, head_t["mean"].shape[0] if "mean" in head_t else -1)
        except BundleError as e:
            raise BundleError(f"{weights}: {e}") from None
        return cls(path, config, scorer, head)

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self.extractor.compute(images), np.float64)

    def log_odds(self, decision: np.ndarray | float) -> np.ndarray:
        """Calibrated log-odds toward ``positive`` from the scorer's decision."""
        return self.platt[0] * np.asarray(decision, np.float64) + self.platt[1]

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Each image as a one-cell bag: 0 for the negative class, calibrated log-odds for the positive."""
        return self.embed_logits(images)[0]

    def embed_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """``logits`` and the frozen cell embeddings (what the unfamiliarity score reads), in one pass."""
        X = self.embed(images)
        z = np.nan_to_num(self.log_odds(self.scorer.cell_scores(X, np.full(len(X), -1))))
        out = np.zeros((len(X), 2))
        out[:, self.positive_index] = z
        return out, X

    def diagnose(self, cells: Sequence[Cell], subject: str | None = None, seed: int = 0) -> PatientCall:
        """The call for one patient from its cell images (paths are read; byte copies count once)."""
        images, names, skipped = _read_cells(cells)
        negative = next(c for c in self.classes if c != self.positive)
        threshold = float(sigmoid(self.log_odds(self.threshold)))
        base = dict(subject=subject, model=str(self.config.get("model", "")), target=str(self.config.get(
            "target", "")), classes=self.classes, positive=self.positive, interval_method=INTERVAL_METHOD,
            threshold=threshold, min_cells=self.min_cells, skipped=skipped)
        if not images:
            return PatientCall(probability=float("nan"), interval=(float("nan"), float("nan")), call=None,
                               too_few=True, **base)  # type: ignore[arg-type]
        X = self.embed(images)
        flagged, scores = self.flag_cells(X)
        keep = np.flatnonzero(~flagged)
        z_all = self.log_odds(np.nan_to_num(self.scorer.cell_scores(X, np.full(len(X), -1))))
        w_all = np.zeros(len(X))
        p, interval = float("nan"), (float("nan"), float("nan"))
        decision = float("nan")
        if len(keep):
            z_keep, w_all[keep], decision, p, interval = self._bag_call(X[keep], seed)
            z_all[keep] = z_keep
        tp = self.head.proba(X)
        evidence = [CellEvidence(n, float(zi), float(wi), float(zi * wi), self.cell_types[int(t.argmax())],
                                 float(t.max()), None if sc is None else float(sc), bool(f))
                    for n, zi, wi, t, sc, f in zip(names, z_all, w_all, tp, scores, flagged, strict=True)]
        too_few = len(keep) < max(self.min_cells, 1)
        call = None if too_few else (self.positive if self.decide(decision) else negative)
        return PatientCall(probability=p, interval=interval, call=call, too_few=too_few, cells=evidence,
                           unfamiliar_checked=self.unfamiliar is not None, **base)  # type: ignore[arg-type]

    def flag_cells(self, X: np.ndarray) -> tuple[np.ndarray, list[float | None]]:
        """Which cells (embeddings ``X``) the unfamiliarity score flags, and each one's score (none
        flagged, scores None, for a bundle written before patient bundles had a score)."""
        if self.unfamiliar is None:
            return np.zeros(len(X), bool), [None] * len(X)
        scores = self.unfamiliar.score(X, np.zeros((len(X), 2)))
        return self.unfamiliar.flag(scores), [float(v) for v in scores]

    def decide(self, decision: np.ndarray | float) -> np.ndarray:
        """The call, positive where True: the decision at or above the stored threshold (the scale the
        threshold was chosen on, so ``evaluate``, ``report`` and the CV make the same calls)."""
        return np.asarray(decision) >= self.threshold

    def _bag_call(self, X: np.ndarray, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, float, float, tuple[float, float]]:
        """Cell log-odds and weights of one bag, the patient's decision, probability and the probability's
        bootstrap interval."""
        unknown = np.full(len(X), -1)
        s, w = self.scorer.bag(X, unknown)
        decision = float(np.nan_to_num(s) @ w)
        z = self.log_odds(np.nan_to_num(s))
        p = float(sigmoid(z @ w))
        rng = np.random.default_rng(seed)
        # resampled in an order of the cells themselves (their embeddings), not the order they were given
        # in: the same cells dropped on the page or read from a folder get the same interval
        canonical = np.lexsort(X.T[::-1])
        boot = []
        for _ in range(BOOTSTRAP_CELLS if len(X) > 1 else 0):
            i = canonical[rng.integers(0, len(X), len(X))]
            bs, bw = self.scorer.bag(X[i], unknown[i])
            boot.append(float(sigmoid(self.log_odds(np.nan_to_num(bs)) @ bw)))
        interval = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))) if boot else (p, p)
        return z, w, decision, p, interval


def _read_cells(cells: Sequence[Cell]) -> tuple[list[np.ndarray], list[str], list[tuple[str, str]]]:
    """Decoded cells and their names; unreadable files, byte copies of an earlier file and whole-field
    overviews (``overview_skip``) skipped."""
    from leukoscope.data.images import file_digest, load_batch

    images: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for i, c in enumerate(cells):
        name = f"image {i}"
        decoded: list[np.ndarray] = [c] if isinstance(c, np.ndarray) else []
        if not isinstance(c, np.ndarray):
            name = str(c)
            try:
                key = file_digest(c)
            except OSError as e:
                skipped.append((name, f"cannot read file ({e.strerror or e})"))
                continue
            if key in seen:
                skipped.append((name, f"byte copy of {seen[key]}"))
                continue
            seen[key] = name
            _, decoded, bad = load_batch([name])
            skipped += bad
        for img in decoded:
            if (why := overview_skip(img)) is not None:
                skipped.append((name, why))
            else:
                images.append(img)
                names.append(name)
    return images, names, skipped


def export_patient_onnx(bundle_dir: Path | str) -> dict[str, Any]:
    """Write the frozen cell-embedding network as ``model.onnx``; the aggregator stays in the weights.

    The patient score needs no network: MODEL_CARD.md gives its formula over ``patient.safetensors``.
    """
    from leukoscope.features.deep import _embedder
    from leukoscope.models.onnx import INPUT, OPSET, export_module

    bundle_dir = Path(bundle_dir)
    config = read_config(bundle_dir)
    if config["family"] != "patient":
        raise BundleError(f"{bundle_dir}: not a patient bundle")
    params = config["features"].get("params", {})
    size = int(params.get("input_size", 224))
    export_module(_embedder(str(params.get("backbone", "efficientnet_lite0"))), size, bundle_dir / ONNX,
                  output="embedding")
    views = int(params.get("views", 1))
    info = {"opset": OPSET, "fp32": ONNX, "input": INPUT, "output": "embedding", "input_size": size,
            "views": views, "embedding": f"mean of the outputs over the first {views} D4 view(s) of the cell "
            "(2: the cell and its left-right mirror)",
            "aggregator": f"{WEIGHTS} (see MODEL_CARD.md, 'How a patient is scored')",
            ONNX_DIGESTS: onnx_digests(bundle_dir, [ONNX])}  # what verify checks model.onnx against
    write_json(bundle_dir / CONFIG, {**config, "onnx": info})
    return info
