"""``Bundle``, the one interface of every trained model, and ``load_bundle``.

Families register a ``Bundle`` subclass with ``@bundle_family(name)`` (declared in
``format.FAMILIES``); the subclass only turns images into uncalibrated scores (``logits``).
Temperature scaling and the probability contract live here, so evaluate / predict / explain /
serve never branch on the family.
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from leukoscope.bundle.format import (
    EXPORT_FILES,
    EXPORTS,
    FAMILIES,
    HISTORY,
    RUNTIMES,
    SPLIT,
    UNFAMILIAR,
    one_line,
    read_config,
    read_metrics,
)
from leukoscope.errors import BundleError, ConfigError, ImageError
from leukoscope.models.unfamiliar import Scorer, load_scorer

if TYPE_CHECKING:  # pandas costs a second of start-up; only history and split need it
    import pandas as pd

#: Fewest cells ``Bundle.adapted`` estimates a new lab's statistics from.
ADAPT_MIN_CELLS = 50
#: ``--adapt`` warns when at least this share of the new cells take one class before adapting.
ONE_TYPE_SHARE = 0.8
#: What ``predict_proba`` takes for one image: an HxWx3 uint8 RGB array, or the path of an image file.
ImageLike = np.ndarray | str | os.PathLike[str]


class Bundle(ABC):
    """A trained model on disk. Subclasses implement ``logits``; everything else is shared."""

    #: The family's weight files in the bundle folder (``verify`` checks they are there).
    weight_files: ClassVar[tuple[str, ...]] = ()
    #: Whether several threads may score batches at once, each on one core (the family's runtime is
    #: single-threaded per call and thread-safe); otherwise the runtime spreads one call over the cores.
    parallel_batches: ClassVar[bool] = False

    def __init__(self, path: Path, config: dict[str, Any]):
        self.path = Path(path)
        self.config = config
        #: The unfamiliarity score (``models.unfamiliar``); None for a bundle written without one.
        self.unfamiliar: Scorer | None = None
        #: How ``adapted`` fitted this model to a new lab's cells (None: as trained).
        self.adaptation: dict[str, Any] | None = None
        #: Added to the family's logits once ``adapted`` (``shifted``; zero as trained).
        self.logit_shift: np.ndarray = np.zeros(len(config["classes"]))
        if "unfamiliar" in config:
            try:
                self.unfamiliar = load_scorer(self.path / UNFAMILIAR, config["unfamiliar"])
            except ValueError as e:
                raise BundleError(str(e)) from None

    @classmethod
    @abstractmethod
    def load(cls, path: Path, config: dict[str, Any]) -> Bundle:
        """Read the family's weights from ``path``."""

    @abstractmethod
    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Uncalibrated scores, one row per HxWx3 uint8 RGB image, one column per class."""

    def adapted(self, batches: Iterable[Sequence[np.ndarray]]) -> Bundle:
        """A copy of this model adapted to a new lab from ``batches`` of its cells, no labels.

        Here (networks): the new cells' mean logits are moved onto the training cells' (config
        ``mean_logits``) by one shift per class. The head is linear, so that is the new lab's mean
        penultimate feature moved onto the training cells', a lab-wide offset removed. Classical bundles
        override it (``ClassicalBundle.adapted``). The unfamiliarity score is computed as before.
        """
        reference = self.config.get("mean_logits")
        if reference is None:
            raise ConfigError(f"--adapt: {self.path} cannot be adapted to a new lab (a {self.family} bundle "
                              f"without the training cells' mean_logits; networks trained since have them)")
        logits = adapt_sample([self.logits(b) for b in batches if len(b)])
        new = copy.copy(self)
        new.logit_shift = self.logit_shift + np.asarray(reference) - logits.mean(axis=0)
        new.adaptation = {"cells": len(logits), "how": "logits centred on the training cells' mean",
                          **mix_warning(self.classes, logits)}
        return new

    def shifted(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` as this model gives them: plus ``logit_shift`` once ``adapted`` (every family's
        logits pass here where they are made)."""
        return logits if self.adaptation is None else logits + self.logit_shift.astype(logits.dtype)

    def prepare(self, images: Sequence[np.ndarray]) -> Any:
        """The per-image work before the model (networks: resize and normalise), split off so that a
        pipeline runs it for the next batch on its decode thread while the model scores this one;
        ``prepared_scored_logits`` takes what it returns. Other families return the images as they are."""
        return images

    def prepared_embed_logits(self, prepared: Any, embed: bool = True
                              ) -> tuple[np.ndarray, np.ndarray | None]:
        """``embed_logits`` of a batch from ``prepare`` (with ``embed`` false: ``logits``, no embedding)."""
        return self.embed_logits(prepared) if embed else (self.logits(prepared), None)

    def embed_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """``logits`` and, in one pass, the embedding the unfamiliarity score reads (None: the family has
        none; networks: penultimate features, classical: the feature rows)."""
        return self.logits(images), None

    def scored_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """``logits`` and each image's unfamiliarity, in one pass (None without a scorer: older bundles)."""
        return self.prepared_scored_logits(self.prepare(images))

    def prepared_scored_logits(self, prepared: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """``scored_logits`` of a batch from ``prepare``."""
        if self.unfamiliar is None:
            return self.prepared_embed_logits(prepared, embed=False)[0], None
        logits, emb = self.prepared_embed_logits(prepared)
        if emb is None and self.unfamiliar.needs_embeddings:
            raise BundleError(f"{self.path}: this runtime gives no embeddings for the unfamiliarity score; "
                              f"re-export (`leukoscope export {self.path} --onnx`) or use --runtime torch")
        return logits, self.unfamiliar.score(emb, logits)

    def assess(self, images: Sequence[ImageLike]) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities and unfamiliarity per image (None without a scorer: older bundles)."""
        from leukoscope.probability import softmax_t

        if self.unfamiliar is None or len(images) == 0:
            return self.predict_proba(images), None
        logits, scores = self.scored_logits(decode(images))
        return softmax_t(logits, self.temperature), scores

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def family(self) -> str:
        return str(self.config["family"])

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature", 1.0))

    def predict_proba(self, images: Sequence[ImageLike] | str | os.PathLike[str]) -> np.ndarray:
        """Calibrated class probabilities, one row per image (rows sum to 1).

        ``images``: HxWx3 uint8 RGB arrays, image file paths, or a mix; one path alone is one image.
        An unreadable file raises ``ImageError`` naming it.
        """
        from leukoscope.probability import softmax_t

        if isinstance(images, str | os.PathLike):
            images = [images]
        arrays = decode(images)
        if len(arrays) == 0:
            return np.zeros((0, len(self.classes)))
        return softmax_t(self.logits(arrays), self.temperature)

    @property
    def display_names(self) -> dict[str, str]:
        """Class code -> what a person reads, stored at training time (``data.classes``); a bundle from
        before has none, and its codes are shown as they are."""
        return dict(self.config.get("display_names") or {})

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The decision threshold chosen at training time for a positive class (None: argmax)."""
        op = self.config.get("operating_point")
        return dict(op) if op else None

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The called class index per row of ``probs`` (``probability.decide`` at this operating point)."""
        from leukoscope.probability import decide

        return decide(probs, self.classes, self.operating_point)

    def metrics(self) -> dict[str, Any]:
        """metrics.json ({} where there is none); a ``BundleError`` naming it when it cannot be read."""
        return read_metrics(self.path)

    def history(self) -> pd.DataFrame | None:
        import pandas as pd

        p = self.path / HISTORY
        return pd.read_csv(p) if p.exists() else None

    def split(self, present: Iterable[str] | None = None) -> pd.DataFrame | None:
        """The split the model was trained with, absolute paths (``data.paths.resolved``: a moved data folder
        is found among the ``present`` image paths)."""
        p = self.path / SPLIT
        return read_split_csv(p, present) if p.exists() else None


def read_split_csv(path: Path, present: Iterable[str] | None = None) -> pd.DataFrame:
    """A bundle's split.csv, paths resolved (``data.paths.resolved``), labels as class names even where
    they look like numbers; one ``BundleError`` naming the file when it is not a split (empty, not CSV,
    no path or label column)."""
    import pandas as pd

    from leukoscope.data.paths import resolved

    try:
        split = pd.read_csv(path, dtype={"subject": object, "label": str}, encoding="utf-8")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not a readable split ({one_line(e)})") from None
    missing = [c for c in ("path", "label") if c not in split]
    if missing:
        raise BundleError(f"{path}: a split needs the column(s) {', '.join(missing)}")
    return resolved(split, present)


def adapt_sample(rows: list[np.ndarray]) -> np.ndarray:
    """The rows of the cells ``Bundle.adapted`` learns a new lab from, refused when too few to say much."""
    if sum(len(r) for r in rows) < ADAPT_MIN_CELLS:
        raise ConfigError(f"--adapt needs at least {ADAPT_MIN_CELLS} readable cells of the new lab to "
                          f"estimate its statistics from, got {sum(len(r) for r in rows)}")
    return np.concatenate(rows)


def mix_warning(classes: Sequence[str], logits: np.ndarray) -> dict[str, str]:
    """``{"warning": ...}`` when most new cells take one class before adapting, else nothing: adapting
    assumes a mix of types like the training cells', and moves a folder of one type towards the others."""
    share = np.bincount(np.asarray(logits).argmax(axis=1), minlength=len(classes)) / max(len(logits), 1)
    top = int(share.argmax())
    if share[top] < ONE_TYPE_SHARE:
        return {}
    return {"warning": f"--adapt: {share[top]:.0%} of these cells look like {classes[top]} before adapting; "
                       f"adapting assumes a mix of cell types like the training cells' and would push cells "
                       f"of one type towards others, so score such a sample without --adapt"}


def decode(images: Iterable[ImageLike]) -> Sequence[np.ndarray]:
    """``images`` with every path decoded (``data.images.load_batch``); arrays pass through once checked to
    be what every model reads (H x W x 3 uint8 RGB, not empty): anything else is one ``ImageError``, not a
    confident call on no pixels or an error from deep inside a model."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ImageError(f"an array of images must be N x H x W x 3, got shape {images.shape}; give a list "
                         "(one array or path per image)")
    if not isinstance(images, Sequence | np.ndarray):
        images = list(images)  # a generator
    for i, im in enumerate(images):
        if not isinstance(im, str | os.PathLike):
            _check_array(i, im)
    paths = [im for im in images if isinstance(im, str | os.PathLike)]
    if not paths:
        return images  # type: ignore[return-value]  # arrays only
    from leukoscope.data.images import load_batch

    _, arrays, skipped = load_batch([os.fspath(p) for p in paths])
    if skipped:
        path, why = skipped[0]
        more = f" (and {len(skipped) - 1} more unreadable)" if len(skipped) > 1 else ""
        raise ImageError(f"{path}: {why}{more}")
    decoded = iter(arrays)
    return [next(decoded) if isinstance(im, str | os.PathLike) else im for im in images]


def _check_array(i: int, im: Any) -> None:
    shape, dtype = getattr(im, "shape", None), getattr(im, "dtype", None)
    if not (isinstance(im, np.ndarray) and im.ndim == 3 and shape is not None and shape[2] == 3
            and shape[0] > 0 and shape[1] > 0 and dtype == np.uint8):
        what = f"shape {shape}, dtype {dtype}" if shape is not None else type(im).__name__
        raise ImageError(f"image {i}: expected an H x W x 3 uint8 RGB array (data.images.load_rgb reads any "
                         f"file into one), got {what}")


def bundle_family(name: str) -> Callable[[type[Bundle]], type[Bundle]]:
    """Class decorator registering the ``Bundle`` subclass that loads family ``name``."""
    return FAMILIES.register(name)


def bundle_runtime(name: str) -> Callable[[type[Bundle]], type[Bundle]]:
    """Class decorator registering the ``Bundle`` subclass that runs export runtime ``name``."""
    return EXPORTS.register(name)


def family_class(family: str) -> type[Bundle]:
    """The ``Bundle`` subclass of a family declared in ``format.FAMILIES`` (imported on first use)."""
    return cast(type[Bundle], FAMILIES[family])


def load_bundle(path: Path | str, runtime: str = "auto") -> Bundle:
    """Load any bundle; the family in config.json picks the class.

    ``runtime`` (network bundles): ``torch``; ``onnx`` (model.onnx) or ``onnx-int8``
    (model.int8.onnx) via ONNX Runtime; ``auto``: ``onnx-int8`` where export found it agreeing with
    fp32 and this CPU has VNNI, else ``onnx`` when a current export is there, else torch
    (``OnnxBundle.auto_runtime``; an export that recorded no SHA-256 of its files, from before they
    were recorded, is not current: torch runs until it is re-exported).
    """
    path = Path(path)
    config = read_config(path)
    if runtime not in RUNTIMES:
        raise BundleError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        onnx_cls: Any = EXPORTS["onnx"]
        runtime = (config["family"] == "network" and onnx_cls.auto_runtime(path, config)) or "torch"
    if runtime in EXPORTS:
        if config["family"] != "network":
            raise BundleError(f"{path}: runtime {runtime!r} is for network bundles; this one is "
                              f"{config['family']}")
        return cast(Any, EXPORTS[runtime]).load(path, config, EXPORT_FILES[runtime])
    return family_class(config["family"]).load(path, config)
