"""Stain normalisation as preprocessing: Reinhard (numpy, LAB statistics), Macenko (torchstain) or grey-world.

``fit(images, method)`` learns a target from training images only and returns a JSON-able dict
stored in the bundle's preprocessing config; ``apply(img, params)`` maps one image to that target
at training and at inference (numpy only, so ONNX Runtime serving never loads torch).
Black background (C-NMC crops) is excluded from the statistics and left black. Grey-world is the cheapest:
each image's channels are scaled so its bright (background) pixels take the training images' background
colour, which undoes another lab's white balance and lamp without touching the cell's own contrast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from leukoscope.errors import ConfigError
from leukoscope.geometry import foreground

METHODS = ("none", "reinhard", "macenko", "greyworld")
#: The share of an image's (foreground) pixels, the brightest, that estimate its background colour.
BRIGHT_SHARE = 0.25


def _foreground(img: np.ndarray) -> np.ndarray:
    """The cell's pixels; the whole image when under 65 of them are (no black surround to skip)."""
    fg = foreground(img)
    return fg if fg.sum() > 64 else np.ones(img.shape[:2], bool)


def _lab_stats(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.color import rgb2lab

    lab = rgb2lab(img)[_foreground(img)]
    return lab.mean(axis=0), lab.std(axis=0) + 1e-6


def _fit_reinhard(images: Sequence[np.ndarray]) -> dict[str, Any]:
    stats = [_lab_stats(im) for im in images]
    return {"mean": np.mean([s[0] for s in stats], axis=0).tolist(),
            "std": np.mean([s[1] for s in stats], axis=0).tolist()}


def _apply_reinhard(img: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    from skimage.color import lab2rgb, rgb2lab

    fg = _foreground(img)
    lab = rgb2lab(img)
    mu, sd = lab[fg].mean(axis=0), lab[fg].std(axis=0) + 1e-6
    lab = (lab - mu) / sd * np.asarray(params["std"]) + np.asarray(params["mean"])
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    out = np.clip(np.round(lab2rgb(lab) * 255), 0, 255).astype(np.uint8)
    out[~fg] = img[~fg]
    return out


def _macenko() -> Any:
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    return NumpyMacenkoNormalizer()


def _fit_macenko(images: Sequence[np.ndarray]) -> dict[str, Any]:
    norm = _macenko()
    # one reference mosaic of (up to) 16 training images, side by side
    ref = np.concatenate([np.asarray(im) for im in images[:16]], axis=1)
    try:
        norm.fit(ref)
    except (np.linalg.LinAlgError, ValueError, IndexError) as e:
        raise ConfigError(f"--stain macenko: no stain matrix fits the training images ({e})") from None
    return {"HERef": norm.HERef.tolist(), "maxCRef": norm.maxCRef.tolist()}


def _apply_macenko(img: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    norm = _macenko()
    norm.HERef = np.asarray(params["HERef"])
    norm.maxCRef = np.asarray(params["maxCRef"])
    fg = _foreground(img)
    try:
        with np.errstate(all="ignore"):
            out, _, _ = norm.normalize(I=img, stains=False)
    except (np.linalg.LinAlgError, ValueError, IndexError):
        return img  # too little stained tissue to estimate a stain matrix: leave as is
    out = np.asarray(out, np.uint8)
    out[~fg] = img[~fg]
    return out


def _background(img: np.ndarray) -> np.ndarray:
    """Mean RGB of the brightest ``BRIGHT_SHARE`` of the image's pixels (plasma and red-cell-free glass)."""
    px = img[_foreground(img)].astype(np.float64)
    bright = px.sum(axis=1)
    return px[bright >= np.quantile(bright, 1 - BRIGHT_SHARE)].mean(axis=0) + 1e-6


def _fit_greyworld(images: Sequence[np.ndarray]) -> dict[str, Any]:
    return {"background": np.mean([_background(im) for im in images], axis=0).tolist()}


def _apply_greyworld(img: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    gain = np.asarray(params["background"]) / _background(img)
    out = np.clip(np.round(img * gain), 0, 255).astype(np.uint8)
    fg = _foreground(img)
    out[~fg] = img[~fg]
    return out


_FIT: dict[str, Callable[[Sequence[np.ndarray]], dict[str, Any]]] = {
    "reinhard": _fit_reinhard, "macenko": _fit_macenko, "greyworld": _fit_greyworld}
_APPLY: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "reinhard": _apply_reinhard, "macenko": _apply_macenko, "greyworld": _apply_greyworld}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"--stain must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def fit(images: Sequence[np.ndarray], method: str) -> dict[str, Any]:
    """The stain target learned from (training) ``images``: ``{"method": ..., **params}``."""
    check_method(method)
    if method == "none" or not len(images):
        return {"method": "none"}
    return {"method": method, **_FIT[method](images)}


def apply(img: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """One HxWx3 uint8 image mapped to the fitted stain target."""
    method = check_method(params.get("method", "none"))
    return img if method == "none" else _APPLY[method](img, params)
