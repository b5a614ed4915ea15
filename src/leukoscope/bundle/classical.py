"""The classical bundle family: a fitted scikit-learn pipeline in skops format plus the feature
settings that turn images into its input.

Nothing loaded may run code: ``pipeline.skops`` is read by skops trusting exactly the types of
``ALLOWED_TYPES`` (no prefix), and refused with their names when it holds any other. The pipeline's
probabilities spread over the config's classes are the family's contract; its logits are their log,
so the bundle's temperature then calibrates them like any other family's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle.base import Bundle, adapt_sample, bundle_family, mix_warning
from leukoscope.bundle.format import CONFIG, SKOPS, one_line
from leukoscope.errors import BundleError, ConfigError

WEIGHTS = SKOPS
#: The types beyond skops' own safe defaults (primitives, containers, arrays, public scikit-learn
#: estimators) that a saved leukoscope pipeline holds, by exact name: the union of
#: ``skops.io.get_untrusted_types`` over a fitted dump of every registered classical model
#: (tests/test_bundle_security.py keeps it complete). Classes only: trusting a prefix such as
#: ``sklearn.`` let a file name ``sklearn.utils._testing.check_output`` (``subprocess.check_output``)
#: and run a shell command on load.
ALLOWED_TYPES = frozenset({
    "collections.OrderedDict",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "numpy.dtype",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.tree._tree.Tree",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
})


def class_probabilities(pipeline: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` spread over all ``n_classes`` columns (a class unseen in training gets 0)."""
    proba = np.asarray(pipeline.predict_proba(X), np.float64)
    seen = np.asarray(pipeline.classes_, int)
    out = np.zeros((len(X), n_classes))
    out[:, seen] = proba
    return out


def log_probabilities(pipeline: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits of a classical model: log of its probabilities (softmax undoes it exactly)."""
    return np.log(np.clip(class_probabilities(pipeline, X, n_classes), 1e-7, 1.0))


def save_pipeline(pipeline: Any, path: Path) -> None:
    """Write a fitted pipeline with skops (never pickle), refusing types outside the allow-list."""
    import skops.io as sio

    sio.dump(pipeline, path)
    _refuse_untrusted(path)


def _refuse_untrusted(path: Path) -> None:
    """Name the file's types that are off ``ALLOWED_TYPES`` (``skops.io.load`` only says that some are).

    ``get_untrusted_types`` only reads the schema: nothing in the file is imported or built.
    """
    import skops.io as sio

    bad = sorted(set(sio.get_untrusted_types(file=path)) - ALLOWED_TYPES)
    if bad:
        raise BundleError(f"{path}: refusing to load types outside the allow-list (they could run code): "
                          f"{', '.join(bad)}")


#: Largest size a pipeline's arrays may declare, all together: a classical model on leukoscope's features is a
#: few MB; a few KB of zip may declare gigabytes of zeros (a zip bomb) that loading would allocate.
MAX_PIPELINE_BYTES = 1 << 30


def _refuse_too_large(path: Path) -> None:
    """Refuse a pipeline whose entries unpack to, or whose arrays declare, more than ``MAX_PIPELINE_BYTES``:
    from the zip's directory and each ``.npy`` header, before anything is allocated."""
    import zipfile

    declared = 0
    with zipfile.ZipFile(path) as z:
        for entry in z.infolist():
            declared += entry.file_size
            if entry.filename.endswith(".npy"):
                with z.open(entry) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                    declared += int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > MAX_PIPELINE_BYTES:
        raise BundleError(f"{path}: its arrays declare {declared:,} bytes, more than a pipeline of "
                          f"leukoscope's holds ({MAX_PIPELINE_BYTES:,}); refusing to unpack it")


def load_pipeline(path: Path) -> Any:
    """Read a skops pipeline, trusting only types on the allow-list (never blindly)."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path.parent}: classical bundle has no {path.name}")
    try:
        _refuse_too_large(path)
        _refuse_untrusted(path)
        # the allow-list again, not what the check found: skops audits the file it actually reads
        return sio.load(path, trusted=sorted(ALLOWED_TYPES))
    except BundleError:
        raise
    except Exception as e:  # a corrupt, truncated or foreign file: say which, on one line
        raise BundleError(f"{path}: cannot read the saved pipeline ({one_line(e)})") from None


def aligned_pipeline(pipeline: Any, X: np.ndarray) -> Any:
    """``pipeline`` with its standardisation refitted on ``X``, the feature rows of another lab's cells.

    Every classical pipeline imputes, then standardises with its training cells' mean and spread
    (``models.classical``); standardising the new lab's rows with their own instead removes a lab-wide shift
    in size, colour or texture before the model sees them, so each feature reads as "how far from this lab's
    typical cell", as it did in training. The imputer and the model are the fitted ones, shared.
    """
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    names = [name for name, _ in pipeline.steps]
    if names[:2] != ["impute", "scale"]:
        raise BundleError(f"--adapt: a pipeline of steps {names} has no standardisation to align")
    impute = pipeline.named_steps["impute"]
    scale = clone(pipeline.named_steps["scale"]).fit(impute.transform(X))
    return Pipeline([("impute", impute), ("scale", scale), *pipeline.steps[2:]])


def adapted_pipeline(pipeline: Any, X: np.ndarray, prior: np.ndarray, temperature: float = 1.0
                     ) -> tuple[Any, np.ndarray, np.ndarray]:
    """``pipeline`` adapted to ``X``, another lab's feature rows, from the rows alone: (the aligned pipeline,
    the shift its logits take, the class frequencies estimated among the rows).

    ``prior``: the class frequencies of the training cells, whose probabilities the pipeline gives. The rows'
    own frequencies are estimated from the aligned pipeline's calibrated probabilities (``temperature``) by
    ``probability.em_priors``; adding ``temperature`` x log(estimated / trained) to the logits reweights the
    calibrated probabilities by that ratio (a class never trained keeps shift 0).
    """
    from leukoscope.probability import em_priors, softmax_t

    aligned = aligned_pipeline(pipeline, X)
    estimated = em_priors(softmax_t(log_probabilities(aligned, X, len(prior)), temperature), prior)
    ratio = np.divide(estimated, prior, out=np.ones_like(prior), where=prior > 0)
    return aligned, temperature * np.log(np.maximum(ratio, 1e-12)), estimated


def check_pipeline(pipeline: Any, path: Path, n_classes: int, n_features: int) -> None:
    """Refuse a pipeline that does not fit its config: a class index outside the config's classes
    (three classes named, four predicted) or another number of input features than the extractor's."""
    seen = getattr(pipeline, "classes_", None)
    if seen is None or not hasattr(pipeline, "predict_proba"):
        raise BundleError(f"{path}: not a fitted classifier with predict_proba")
    seen = np.asarray(seen)
    if seen.dtype.kind not in "iu" or len(np.unique(seen)) != len(seen) or len(seen) > n_classes \
            or seen.min() < 0 or seen.max() >= n_classes:
        raise BundleError(f"{path}: the pipeline predicts classes {seen.tolist()}, but {CONFIG} lists "
                          f"{n_classes} (indices 0..{n_classes - 1})")
    expected = getattr(pipeline, "n_features_in_", n_features)
    if expected != n_features:
        raise BundleError(f"{path}: the pipeline takes {expected} features, but the {CONFIG} 'features' "
                          f"settings give {n_features}")


@bundle_family("classical")
class ClassicalBundle(Bundle):
    """A fitted pipeline plus the feature settings that turn images into its input."""

    weight_files = (WEIGHTS,)

    def __init__(self, path: Path, config: dict[str, Any], pipeline: Any):
        from leukoscope.features import from_spec

        super().__init__(path, config)
        self.pipeline = pipeline
        try:
            self.extractor = from_spec(config["features"])
        except ConfigError as e:
            raise BundleError(f"{self.path / CONFIG}: features: {e}") from None
        check_pipeline(pipeline, self.path / WEIGHTS, len(self.classes), len(self.extractor.names()))

    @classmethod
    def load(cls, path: Path, config: dict[str, Any]) -> ClassicalBundle:
        return cls(path, config, load_pipeline(Path(path) / WEIGHTS))

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The feature rows the pipeline sees (used by explanations too)."""
        return self.extractor.compute(images)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._logits(self.features(images))

    def embed_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The feature rows (the unfamiliarity score standardises them) and the logits."""
        X = self.features(images)
        return self._logits(X), X

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self.shifted(log_probabilities(self.pipeline, X, len(self.classes)))

    def adapted(self, batches: Iterable[Sequence[np.ndarray]]) -> ClassicalBundle:
        """This model adapted to a new lab from ``batches`` of its cells, no labels (``adapted_pipeline``).
        The unfamiliarity score still reads the raw features: a cell unlike the training cells stays
        flagged, however many came with it."""
        X = adapt_sample([self.features(b) for b in batches if len(b)])
        prior = self.training_prior()
        new = copy.copy(self)
        new.pipeline, new.logit_shift, estimated = adapted_pipeline(self.pipeline, X, prior, self.temperature)
        new.adaptation = {"cells": len(X), "how": "features standardised with their own statistics; class "
                          "frequencies estimated by EM",
                          "training_frequencies": dict(zip(self.classes, prior.tolist(), strict=True)),
                          "estimated_frequencies": dict(zip(self.classes, estimated.tolist(), strict=True)),
                          **mix_warning(self.classes, log_probabilities(self.pipeline, X, len(self.classes)))}
        return new

    def training_prior(self) -> np.ndarray:
        """Class frequencies of the training side (split.csv): what the pipeline's probabilities assume."""
        from leukoscope.data.rare import as_trained

        split = self.split()
        if split is None or "side" not in split:
            raise BundleError(f"{self.path}: no split.csv with a train side, so the training class "
                              f"frequencies are unknown")
        train = as_trained(split[split["side"] == "train"], self.config)
        counts = train["label"].value_counts().reindex(self.classes, fill_value=0).to_numpy(np.float64)
        return counts / max(counts.sum(), 1.0)
