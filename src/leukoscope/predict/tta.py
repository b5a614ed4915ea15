"""Test-time augmentation on decoded images: the eight flips / 90-degree rotations (D4 group).

Working on HxWx3 arrays (not on a framework's tensors) makes it apply to every bundle family and
runtime alike (classical, PyTorch, ONNX); the calibrated probabilities of the views are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from leukoscope.bundle import Bundle
from leukoscope.evaluate.calibration import softmax_t

N_VIEWS = 8


def d4_views(img: np.ndarray) -> list[np.ndarray]:
    """The eight rotations / mirror images of an HxWx3 image (the first is the image itself)."""
    out = []
    for k in range(4):
        r = np.rot90(img, k, axes=(0, 1))
        out += [np.ascontiguousarray(r), np.ascontiguousarray(r[:, ::-1])]
    return out


def view_logits(bundle: Bundle, images: Sequence[np.ndarray], tta: bool = False) -> np.ndarray:
    """Uncalibrated scores, shape (images, views, classes): one view, or the eight D4 views."""
    if not tta:
        return np.asarray(bundle.logits(images))[:, None, :]
    views = [v for img in images for v in d4_views(img)]
    return np.asarray(bundle.logits(views)).reshape(len(images), N_VIEWS, -1)


def proba_from_views(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Mean over views of the tempered softmax: (images, views, classes) -> (images, classes)."""
    n, v, k = logits.shape
    return softmax_t(logits.reshape(n * v, k), temperature).reshape(n, v, k).mean(axis=1)


def predict_proba(bundle: Bundle, images: Sequence[np.ndarray], tta: bool = False) -> np.ndarray:
    """``bundle.predict_proba``, or with ``tta`` the mean calibrated probability over the D4 views."""
    if not tta or len(images) == 0:
        return bundle.predict_proba(images)
    return proba_from_views(view_logits(bundle, images, tta=True), bundle.temperature)
