"""Handcrafted cell features a hematologist recognises: shape, stain colour and chromatin texture.

Segmentation works on two kinds of picture at one fixed working size (so sizes are comparable
whatever the file's resolution; a non-square image is padded, not stretched):

- **crops on black** (C-NMC): the cell is everything brighter than the background; the nucleus is
  the darker-blue part of it (Otsu on smoothed Lab b* inside the cell);
- **stained smear fields** (ALL-IDB2, the 4-class set): a pale background with red cells around.
  Three-class Otsu on smoothed Lab b* separates nucleus (most blue), cytoplasm (bluish) and
  background + red cells; the nucleus kept is the component nearest the centre, the cell is the
  cytoplasm connected to it within a disk around the nucleus (so neighbours do not leak in).

Features (NaN where a region is empty; the pipelines impute):

- morphology of nucleus and cell: area and perimeter (as fractions of the working image),
  eccentricity, solidity, extent, circularity (4 pi A / P^2, Crofton perimeter), axes;
  nucleus-to-cell area ratio and nucleus offset;
- colour: mean and std of R, G, B, H, S, V, L*, a*, b* in the nucleus and in the cytoplasm;
- texture: GLCM contrast, dissimilarity, homogeneity, energy, correlation and ASM of the nucleus
  (distances 1 and 3, averaged over four angles), and the uniform LBP (P=8, R=1) histogram;
- field: how many nuclei, what fraction of the image they cover, their mean size and colour (the
  4-class set shows fields of several blasts, not a single centred cell).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from leukoscope.features import PerImageFeatures, register_features
from leukoscope.geometry import foreground

_CHANNELS = ("r", "g", "b", "h", "s", "v", "lab_l", "lab_a", "lab_b")
_SHAPE = ("area", "perimeter", "eccentricity", "solidity", "extent", "circularity",
          "major_axis", "minor_axis")
_GLCM = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
_GLCM_DISTANCES = (1, 3)
_GLCM_LEVELS = 32
_LBP_BINS = 10  # uniform LBP with P=8 has P + 2 codes
_FIELD = ("nuclei_count", "nuclei_fraction", "nuclei_mean_area", "nuclei_std_area",
          "nuclei_lab_l", "nuclei_lab_a", "nuclei_lab_b")
#: Median border lightness below which the picture is a crop on black (C-NMC).
_DARK_BORDER_L = 15.0


def _names() -> list[str]:
    names = [f"nucleus_{s}" for s in _SHAPE] + [f"cell_{s}" for s in _SHAPE]
    names += ["nc_ratio", "nucleus_offset"]
    for region in ("nucleus", "cytoplasm"):
        names += [f"{region}_{c}_{stat}" for c in _CHANNELS for stat in ("mean", "std")]
    names += [f"glcm_{p}_d{d}" for d in _GLCM_DISTANCES for p in _GLCM]
    names += [f"lbp_{i}" for i in range(_LBP_BINS)]
    names += [f"field_{f}" for f in _FIELD]
    return names


NAMES = _names()


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx * xx + yy * yy <= r * r


def _clean(mask: np.ndarray, radius: int) -> np.ndarray:
    """Open away specks, close small gaps, fill holes."""
    se = _disk(radius)
    mask = ndi.binary_opening(mask, se)
    mask = ndi.binary_closing(mask, se)
    return ndi.binary_fill_holes(mask)


def _component_nearest_centre(labels: np.ndarray, n: int, min_area: int) -> np.ndarray:
    """The labelled component whose edge is nearest the image centre (empty mask if none)."""
    if n == 0:
        return np.zeros(labels.shape, bool)
    idx = np.arange(1, n + 1)
    areas = ndi.sum_labels(np.ones(labels.shape), labels, idx)
    centres = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, idx)).reshape(-1, 2)
    mid = (np.array(labels.shape) - 1) / 2
    score = np.hypot(*(centres - mid).T) - np.sqrt(areas / np.pi)
    score[areas < min_area] = np.inf
    if not np.isfinite(score).any():
        return np.zeros(labels.shape, bool)
    return labels == idx[int(np.argmin(score))]


def segment(rgb: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of the central nucleus, its cell, and every nucleus in the field."""
    from skimage.filters import threshold_multiotsu, threshold_otsu

    size = rgb.shape[0]
    light, blue = lab[..., 0], ndi.gaussian_filter(lab[..., 2], 1.5)
    border = np.concatenate([light[0], light[-1], light[:, 0], light[:, -1]])
    min_area = max(4, int(0.002 * size * size))
    radius = max(1, size // 80)
    empty = np.zeros(light.shape, bool)
    if np.ptp(blue) < 2.0:  # a flat picture: no stain contrast, nothing to segment
        return empty, empty, empty
    on_black = np.median(border) < _DARK_BORDER_L
    if on_black:
        cell_region = _clean(foreground(light, _DARK_BORDER_L / 2, channel_axis=None), radius)
        inside = blue[cell_region] if cell_region.sum() >= min_area else blue.ravel()
        nuclei = _clean(cell_region & (blue < threshold_otsu(inside)), radius)
    else:
        try:
            t_nucleus, t_cell = threshold_multiotsu(blue, classes=3)
        except ValueError:  # fewer than three grey levels
            return empty, empty, empty
        nuclei = _clean(blue < t_nucleus, radius)
        cell_region = _clean(blue < t_cell, radius)
    labels, n = ndi.label(nuclei)
    nucleus = _component_nearest_centre(labels, n, min_area)
    if not nucleus.any():
        return nucleus, nucleus, nuclei
    if not on_black:  # cytoplasm within reach of this nucleus, not the neighbours'
        cy, cx = ndi.center_of_mass(nucleus)
        yy, xx = np.ogrid[:size, :size]
        cell_region &= np.hypot(yy - cy, xx - cx) <= 1.6 * np.sqrt(nucleus.sum() / np.pi) + 3
    cell_labels, _ = ndi.label(cell_region | nucleus)
    cell = ndi.binary_fill_holes(np.isin(cell_labels, np.unique(cell_labels[nucleus])))
    return nucleus, cell, nuclei


def _shape(mask: np.ndarray) -> list[float]:
    from skimage.measure import regionprops

    if not mask.any():
        return [np.nan] * len(_SHAPE)
    p = regionprops(mask.astype(np.uint8))[0]
    side = mask.shape[0]
    perimeter = p.perimeter_crofton
    circularity = 4 * np.pi * p.area / perimeter**2 if perimeter > 0 else np.nan
    return [p.area / side**2, perimeter / side, p.eccentricity, p.solidity, p.extent, circularity,
            p.axis_major_length / side, p.axis_minor_length / side]


def _colour(pixels_rgb: np.ndarray, pixels_lab: np.ndarray) -> list[float]:
    from skimage.color import rgb2hsv

    if len(pixels_rgb) == 0:
        return [np.nan] * (2 * len(_CHANNELS))
    hsv = rgb2hsv(pixels_rgb[None]).reshape(-1, 3)
    chans = np.concatenate([pixels_rgb, hsv, pixels_lab], axis=1)
    return list(np.stack([chans.mean(0), chans.std(0)], axis=1).ravel())


def _glcm(gray: np.ndarray, mask: np.ndarray) -> list[float]:
    """GLCM properties of the masked region only (level 0 marks 'outside' and is dropped)."""
    from skimage.feature import graycomatrix, graycoprops

    if mask.sum() < 9:
        return [np.nan] * (len(_GLCM) * len(_GLCM_DISTANCES))
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    q = 1 + np.minimum(gray[box] * (_GLCM_LEVELS - 1), _GLCM_LEVELS - 2).astype(np.uint8)
    q[~mask[box]] = 0
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    m = graycomatrix(q, list(_GLCM_DISTANCES), angles, levels=_GLCM_LEVELS, symmetric=True)
    m = m[1:, 1:].astype(np.float64)
    m /= np.maximum(m.sum(axis=(0, 1), keepdims=True), 1)
    out = []
    for d in range(len(_GLCM_DISTANCES)):
        sub = m[:, :, d:d + 1, :]
        out += [float(np.nanmean(graycoprops(sub, p))) for p in _GLCM]
    return out


def _lbp(gray: np.ndarray, mask: np.ndarray) -> list[float]:
    from skimage.feature import local_binary_pattern

    if not mask.any():
        return [np.nan] * _LBP_BINS
    ys, xs = np.nonzero(mask)
    box = (slice(max(ys.min() - 1, 0), ys.max() + 2), slice(max(xs.min() - 1, 0), xs.max() + 2))
    codes = local_binary_pattern((gray[box] * 255).astype(np.uint8), 8, 1, "uniform")
    hist = np.bincount(codes[mask[box]].astype(int), minlength=_LBP_BINS)[:_LBP_BINS]
    return list(hist / hist.sum())


def _field(nuclei: np.ndarray, lab: np.ndarray) -> list[float]:
    side = nuclei.shape[0]
    labels, n = ndi.label(nuclei)
    if n == 0:
        return [0.0, 0.0] + [np.nan] * (len(_FIELD) - 2)
    areas = ndi.sum_labels(np.ones(labels.shape), labels, np.arange(1, n + 1)) / side**2
    return [float(n), float(nuclei.mean()), float(areas.mean()), float(areas.std()),
            *lab[nuclei].mean(0)]


def working_image(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` at ``size`` x ``size``: longer side scaled to ``size``, the shorter one padded by
    repeating its edge, so shapes keep their proportions (ALL-IDB2's border crops are not square)."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = (size - nh) // 2, (size - nw) // 2
    return np.pad(img, ((top, size - nh - top), (left, size - nw - left), (0, 0)), mode="edge")


def cell_features(img: np.ndarray, size: int) -> np.ndarray:
    """The feature row of one HxWx3 uint8 RGB image, computed at ``size`` x ``size``."""
    from skimage.color import rgb2lab

    rgb = working_image(img, size).astype(np.float32) / 255.0
    lab = rgb2lab(rgb)
    nucleus, cell, nuclei = segment(rgb, lab)
    cytoplasm = cell & ~nucleus
    gray = lab[..., 0] / 100.0
    nuc_shape, cell_shape = _shape(nucleus), _shape(cell)
    if nucleus.any() and cell.any():
        ratio = nucleus.sum() / cell.sum()
        offset = np.hypot(*np.subtract(ndi.center_of_mass(nucleus), ndi.center_of_mass(cell)))
        offset /= np.sqrt(cell.sum() / np.pi)
    else:
        ratio = offset = np.nan
    row = [*nuc_shape, *cell_shape, ratio, offset,
           *_colour(rgb[nucleus], lab[nucleus]), *_colour(rgb[cytoplasm], lab[cytoplasm]),
           *_glcm(gray, nucleus), *_lbp(gray, nucleus), *_field(nuclei, lab)]
    return np.asarray(row, np.float32)


@register_features("handcrafted")
class Handcrafted(PerImageFeatures):
    """Shape, colour and texture of the segmented nucleus and cell (see the module docstring)."""

    version = 2  # 2: aspect ratio kept (padding) instead of stretching to a square
    columns = NAMES
    default_size = 160

    def of_image(self, image: np.ndarray) -> np.ndarray:
        return cell_features(image, self.size)
