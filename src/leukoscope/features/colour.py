"""The ``colour`` feature kind: colour statistics of the whole image and of its background, no shape.

It exists to measure a shortcut, not to classify: if a classifier that sees only how the picture is
coloured (stain batch, illumination, camera, the tint of the background between cells) separates the
classes nearly as well as the best model, the data set may be separable by stain or acquisition
rather than by morphology, and a high score on it proves little (``evaluate.shortcut``).

Per region, per channel (R, G, B in 0-1 and L*, a*, b*): mean, std and the 5th, 50th and 95th
percentiles. The regions are the whole image and the background, i.e. every pixel outside the
central cell as ``handcrafted.segment`` finds it (the black surround of a C-NMC crop; plasma, red
cells and neighbours in a smear field); when no cell is found the background is the whole image.
Whole-image statistics still shift with how much of the picture the cell covers; no feature
measures the cell's shape, size or texture directly.
"""

from __future__ import annotations

import numpy as np

from leukoscope.features import PerImageFeatures, register_features
from leukoscope.features.handcrafted import segment, working_image

_CHANNELS = ("r", "g", "b", "lab_l", "lab_a", "lab_b")
_PERCENTILES = (5, 50, 95)
_STATS = ("mean", "std", *(f"p{q}" for q in _PERCENTILES))
_REGIONS = ("image", "background")
NAMES = [f"colour_{region}_{c}_{s}" for region in _REGIONS for c in _CHANNELS for s in _STATS]


def _stats(pixels: np.ndarray) -> np.ndarray:
    """Mean, std and percentiles of each column of an N x channels array (column-major order)."""
    q = np.percentile(pixels, _PERCENTILES, axis=0)
    return np.vstack([pixels.mean(0), pixels.std(0), q]).T.ravel()


def colour_features(img: np.ndarray, size: int) -> np.ndarray:
    """The colour row of one HxWx3 uint8 RGB image, computed at ``size`` x ``size``."""
    from skimage.color import rgb2lab

    rgb = working_image(img, size).astype(np.float32) / 255.0
    lab = rgb2lab(rgb)
    _, cell, _ = segment(rgb, lab)
    chans = np.concatenate([rgb, lab], axis=2).reshape(-1, len(_CHANNELS))
    background = ~cell.ravel() if (~cell).any() else np.ones(len(chans), bool)
    return np.concatenate([_stats(chans), _stats(chans[background])]).astype(np.float32)


@register_features("colour")
class Colour(PerImageFeatures):
    """Whole-image and background colour statistics (the stain / acquisition shortcut probe)."""

    version = 1
    columns = NAMES
    default_size = 96

    def of_image(self, image: np.ndarray) -> np.ndarray:
        return colour_features(image, self.size)
