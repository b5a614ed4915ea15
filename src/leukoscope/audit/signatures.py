"""What the audit keeps of one image, and how two kept images are compared.

An exact copy shares the SHA-1 of its decoded pixels (so one cell as BMP and PNG counts). A near
copy is first proposed by a low-frequency DCT signature (the coefficients a pHash thresholds, on a
grayscale image; a cell on a black background is cut to its box and stretched square) under all
eight views of ``geometry.D4`` and three zooms (centred crops of 0, 5 and 10 % per side, ``ZOOMS``),
then verified by the best normalised cross-correlation of band-passed detail over small shifts,
crops, relative zooms up to 1.25 and aspect ratios (template matching). Low frequencies alone cannot
tell two round blobs apart; matching detail can, and stays high under JPEG, light crops, and crops
resized back to the original size (which zoom the cell by up to 1.25 at 10 % per side, and stretch
it along one axis when opposite edges lose more than the others).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn, irfft2, rfft2
from scipy.ndimage import binary_dilation, gaussian_filter

from leukoscope.batches import chunks
from leukoscope.data.images import load_rgb
from leukoscope.errors import ImageError
from leukoscope.geometry import D4, dihedral, foreground
from leukoscope.progress import Advance

_LOW = 32  # side of the grayscale image the DCT signature is computed on
_COEFFS = 8  # the signature keeps the top-left 8x8 DCT coefficients minus DC, as pHash does
_DETAIL = 64  # side of the band-passed image candidates are verified on
_TEMPLATE = 0.8  # verification slides the central 80 % of one image over the other
_OUTLINE = 0.3  # weight of the outline band of a cell on black (interior detail weighs 1)
_MIN_PARALLEL = 400  # below this many images, starting worker processes costs more than it saves
#: Share of the side cropped from each edge for each zoomed view of the DCT signature.
ZOOMS = (0.0, 0.05, 0.10)
#: Relative zooms tried in verification (either image may be the zoomed one): 1 to 1.25, which is
#: 10 % cropped per side and resized back, in steps of under 3 % so that fine detail stays aligned.
_VERIFY_ZOOMS = tuple(1.25 ** (k / 8) for k in range(9))
#: Aspect ratios (height over width, square-rooted) tried around the best zoom of a likely pair:
#: crops of 2 and 10 % on opposite edges stretch one axis by up to 1.2 more than the other.
_ASPECTS = tuple(r for k in (1.03, 1.06, 1.09, 1.12) for r in (k, 1 / k))
_REFINE = 0.6  # verification scores from which the aspect ratio is refined


@dataclass(frozen=True)
class Signature:
    """What the audit keeps of one image: pixel digest, DCT signatures, band-passed detail."""

    digest: str
    dct: np.ndarray  # (24, 63): each zoom of ``ZOOMS`` under each of the 8 dihedral views, unit norm
    detail: np.ndarray  # (_DETAIL, _DETAIL) float32, band-passed grayscale, untransformed
    side: int  # side in pixels of the centred square the signature was taken from
    box: tuple[int, int] | None  # (height, width) in pixels of the cell on black, else None


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _centred(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smallest square around the cell when it sits on black, else the image padded square;
    and the cell's box (the image when not on black).

    Cropping black margins (or adding them) then leaves the signature unchanged.
    """
    mask = foreground(g, channel_axis=None)
    if mask.any() and mask.mean() < 0.9:
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    else:
        y0, y1, x0, x1 = 0, g.shape[0], 0, g.shape[1]
    half = max(y1 - y0, x1 - x0) / 2
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top, left = int(round(cy - half)), int(round(cx - half))
    side = int(round(2 * half))
    box = g[y0:y1, x0:x1]
    pad = max(0, -top, -left, top + side - g.shape[0], left + side - g.shape[1])
    if pad:
        g = np.pad(g, pad, mode="edge")
    return g[top + pad:top + pad + side, left + pad:left + pad + side], box


def _zoom(a: np.ndarray, crop: float) -> np.ndarray:
    """The centre of ``a`` without ``crop`` of its height and width on each edge."""
    q, r = (int(round(n * crop)) for n in a.shape)
    return a[q:a.shape[0] - q, r:a.shape[1] - r]


def _resize(a: np.ndarray, side: int, width: int | None = None) -> np.ndarray:
    """``a`` resized to ``side`` x ``side`` (or ``side`` high and ``width`` wide)."""
    resized = Image.fromarray(a.astype(np.float32)).resize((width or side, side), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.float32)


def _bandpass(a: np.ndarray) -> np.ndarray:
    return (gaussian_filter(a, 0.7) - gaussian_filter(a, 3.0)).astype(np.float32)


def _detail(square: np.ndarray) -> np.ndarray:
    """Band-passed detail; for a cell on black only its interior, as outlines of round cells agree."""
    small = _resize(square, _DETAIL)
    detail = _bandpass(small)
    background = ~foreground(small, channel_axis=None)
    if background.mean() > 0.05:
        detail *= np.where(binary_dilation(background, iterations=3), _OUTLINE, 1.0).astype(np.float32)
    return detail


def _dct_views(c: np.ndarray) -> list[np.ndarray]:
    """The top-left ``_COEFFS`` square of the DCT of each ``D4`` view of an image, from its DCT ``c``:
    mirroring an axis flips the sign of its odd coefficients and a transpose transposes them, so one
    DCT serves the eight views (``view`` turns by mirroring the second axis, then transposing)."""
    c = c[:_COEFFS, :_COEFFS]
    odd = np.where(np.arange(_COEFFS) % 2, -1, 1).astype(c.dtype)
    out = []
    for k, mirrored in D4:
        v = c
        for _ in range(k):
            v = (v * odd).T
        out.append(v * odd if mirrored else v)
    return out


def signature(img: np.ndarray) -> Signature:
    """The audit's signature of one HxWx3 uint8 RGB image."""
    digest = hashlib.sha1(f"{img.shape}".encode() + np.ascontiguousarray(img).tobytes()).hexdigest()
    square, box = _centred(_gray(img))
    on_black = box.shape != img.shape[:2]
    # a cell on black is stretched box to square: a crop resized back, unevenly, stretches the box
    fitted = box if on_black else square
    dct = np.stack([c.ravel()[1:] for z in ZOOMS
                    for c in _dct_views(dctn(_resize(_zoom(fitted, z), _LOW), norm="ortho"))])
    dct /= np.linalg.norm(dct, axis=1, keepdims=True) + 1e-9
    return Signature(digest, dct.astype(np.float32), _detail(square), square.shape[0],
                     box.shape if on_black else None)


class _Sliding:
    """Normalised cross-correlation of templates slid over one image ``a`` (at most its size).

    The image's spectrum and integral images are computed once for all the templates tried on it.
    Its side is the FFT size: a template slid only where it fits never wraps around.
    """

    def __init__(self, a: np.ndarray) -> None:
        self.shape = a.shape
        self.spectrum = rfft2(a)
        self.sums = np.zeros((2, a.shape[0] + 1, a.shape[1] + 1))  # of a and a squared
        self.sums[0, 1:, 1:] = a
        self.sums[1, 1:, 1:] = np.square(self.sums[0, 1:, 1:])
        np.cumsum(np.cumsum(self.sums, 1, out=self.sums), 2, out=self.sums)

    def best(self, t: np.ndarray) -> float:
        """Best normalised cross-correlation of template ``t`` over every placement inside ``a``."""
        t = t - t.mean()
        tn = float(np.sqrt((t * t).sum()))
        if tn < 1e-6:
            return 0.0
        h, w = t.shape
        num = irfft2(self.spectrum * np.conj(rfft2(t, self.shape)), self.shape)
        num = num[:self.shape[0] - h + 1, :self.shape[1] - w + 1]
        c = self.sums
        s1, s2 = c[:, h:, w:] - c[:, :-h, w:] - c[:, h:, :-w] + c[:, :-h, :-w]  # window sums
        norms = np.sqrt(np.maximum(s2 - s1 * s1 / (h * w), 1e-12))
        return float((num / (norms * tn)).max())


def _template(a: np.ndarray, side: int, width: int | None = None) -> np.ndarray:
    """The central ``_TEMPLATE`` of ``a`` resized to ``side`` (high, and ``width`` wide if given)."""
    width = width or side
    b = a if (side, width) == a.shape else _resize(a, side, width)
    q, r = (int(round(n * (1 - _TEMPLATE) / 2)) for n in (side, width))
    return b[q:side - q, r:width - r]


def _fitted(x_side: int, y_side: int, x_box: tuple[int, int] | None, y_box: tuple[int, int] | None
            ) -> tuple[int, int]:
    """Size to resize detail ``y`` to so that it matches detail ``x`` (taken from squares of
    ``x_side`` and ``y_side`` pixels): cells on black fitted box to box, along each axis (a crop
    resized back stretches the box, unevenly when the edges lost different shares); other images
    at the same pixel size (a crop left as is)."""
    if x_box is None or y_box is None:
        return (int(round(_DETAIL * y_side / x_side)),) * 2
    h, w = (int(round(_DETAIL * x_box[k] * y_side / (x_side * y_box[k]))) for k in (0, 1))
    return h, w


def verify(a: Signature, b: Signature, transform: int) -> float:
    """Detail correlation of ``b`` (under view ``transform`` of the DCT signature: ``D4`` view
    ``transform % 8`` of zoom ``ZOOMS[transform // 8]``) with ``a``, over shifts and scales.

    Scales: the one that fits the two images (``_fitted``) and the relative zooms of
    ``_VERIFY_ZOOMS`` near the one the zoomed view proposes (that zoom of ``b`` looked like ``a``,
    so ``a`` shows ``b`` magnified; with no zoom proposed, either may be). The central part of the
    magnified image, shrunk by the zoom, is slid over the other, so either may be the crop of the
    other. A score of at least ``_REFINE`` is refined over aspect ratios around the best scale: a
    crop that cuts more from two opposite edges than from the others, resized back, stretches
    the image along one axis.
    """
    d4, hint = transform % 8, 1 / (1 - 2 * ZOOMS[transform // 8])
    zooms = {z for z in _VERIFY_ZOOMS if abs(np.log(z / hint)) <= 0.07}
    db = np.ascontiguousarray(dihedral(b.detail)[d4])
    b_box = b.box[::-1] if b.box is not None and D4[d4][0] % 2 else b.box  # quarter turns swap axes
    over_a, over_b = _Sliding(a.detail), _Sliding(db)
    best, best_at = 0.0, (over_a, db, _DETAIL, _DETAIL)
    for x, y, fitted, magnified in ((over_a, db, _fitted(a.side, b.side, a.box, b_box), hint == 1),
                                    (over_b, a.detail, _fitted(b.side, a.side, b_box, a.box), True)):
        shapes = {fitted}
        if magnified:
            shapes |= {(int(round(_DETAIL / z)),) * 2 for z in zooms}
        for h, w in shapes:
            score = _slide(x, y, h, w)
            if score > best:
                best, best_at = score, (x, y, h, w)
    if best >= _REFINE:
        x, y, h, w = best_at
        best = max([best] + [_slide(x, y, int(round(h * r)), int(round(w / r))) for r in _ASPECTS])
    return best


def _slide(x: _Sliding, y: np.ndarray, h: int, w: int) -> float:
    """Best correlation over ``x`` of the centre of ``y`` resized to ``h`` x ``w`` (0 if it does not fit)."""
    t = _template(y, h, w)
    return x.best(t) if min(t.shape) >= 4 and max(t.shape) <= _DETAIL else 0.0


def _signature_or_reason(path: str) -> Signature | str:
    try:
        return signature(load_rgb(path))
    except ImageError as e:
        return str(e).removeprefix(f"{path}: ")


def _chunk_signatures(paths: list[str]) -> list[Signature | str]:
    return [_signature_or_reason(p) for p in paths]


def signatures(paths: list[str], n_jobs: int, advance: Advance) -> Iterator[Signature | str]:
    """Signature (or the reason it failed) of each path, in order; worker processes for many."""
    from joblib import Parallel, delayed, effective_n_jobs

    workers = effective_n_jobs(n_jobs)
    if workers == 1 or len(paths) < _MIN_PARALLEL:
        for p in paths:
            yield _signature_or_reason(p)
            advance(1)
        return
    size = int(np.clip(len(paths) // (workers * 8), 4, 64))
    tasks = (delayed(_chunk_signatures)(c) for c in chunks(paths, size))
    for part in Parallel(n_jobs=workers, return_as="generator")(tasks):
        for sig in part:
            yield sig
            advance(1)
