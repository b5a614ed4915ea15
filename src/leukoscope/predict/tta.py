"""Test-time augmentation on decoded images: the eight flips / 90-degree rotations (D4 group).

Working on HxWx3 arrays (not on a framework's tensors) makes it apply to every bundle family and
runtime alike (classical, PyTorch, ONNX); the calibrated probabilities of the views are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from leukoscope.bundle import Bundle, ImageLike
from leukoscope.bundle.base import decode
from leukoscope.geometry import D4, dihedral
from leukoscope.probability import softmax_t


def view_logits(bundle: Bundle, images: Sequence[np.ndarray], tta: bool = False) -> np.ndarray:
    """Uncalibrated scores, shape (images, views, classes): one view, or the eight D4 views."""
    if not tta:
        return np.asarray(bundle.logits(images))[:, None, :]
    views = [np.ascontiguousarray(v) for img in images for v in dihedral(img)]
    return np.asarray(bundle.logits(views)).reshape(len(images), len(D4), -1)


def proba_from_views(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Mean over views of the tempered softmax: (images, views, classes) -> (images, classes)."""
    n, v, k = logits.shape
    return softmax_t(logits.reshape(n * v, k), temperature).reshape(n, v, k).mean(axis=1)


def predict_proba(bundle: Bundle, images: Sequence[ImageLike], tta: bool = False) -> np.ndarray:
    """``bundle.predict_proba``, or with ``tta`` the mean calibrated probability over the D4 views; images
    as arrays or as file paths, as ``bundle.predict_proba`` takes them."""
    if not tta or len(images) == 0:
        return bundle.predict_proba(images)
    return proba_from_views(view_logits(bundle, decode(images), tta=True), bundle.temperature)
