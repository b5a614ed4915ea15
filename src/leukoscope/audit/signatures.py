"""What the audit keeps of one image, and how two kept images are compared.

An exact copy shares the SHA-1 of its decoded pixels (so one cell as BMP and PNG counts). A near
copy is first proposed by a low-frequency DCT signature (the coefficients a pHash thresholds, on a
grayscale image centred on the cell when it sits on a black background) under all eight views of
``geometry.D4`` and three zooms (centred crops of 0, 5 and 10 % per side, ``ZOOMS``), then
verified by the best normalised cross-correlation of band-passed detail over small shifts, crops
and relative zooms up to 1.25 (template matching). Low frequencies alone cannot tell two round
blobs apart; matching detail can, and stays high under JPEG, light crops, and crops resized back to
the original size (which zoom the cell by up to 1.25 at 10 % per side).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.ndimage import binary_dilation, gaussian_filter
from scipy.signal import correlate

from leukoscope.data.images import load_rgb
from leukoscope.errors import ImageError
from leukoscope.geometry import dihedral, foreground
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


@dataclass(frozen=True)
class Signature:
    """What the audit keeps of one image: pixel digest, DCT signatures, band-passed detail."""

    digest: str
    dct: np.ndarray  # (24, 63): each zoom of ``ZOOMS`` under each of the 8 dihedral views, unit norm
    detail: np.ndarray  # (_DETAIL, _DETAIL) float32, band-passed grayscale, untransformed
    side: int  # side in pixels of the centred square the signature was taken from
    norms: np.ndarray  # centred norm of every window of ``detail`` the size of a same-scale template


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _centred(g: np.ndarray) -> np.ndarray:
    """The smallest square around the cell when it sits on black, else the image padded square.

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
    pad = max(0, -top, -left, top + side - g.shape[0], left + side - g.shape[1])
    if pad:
        g = np.pad(g, pad, mode="edge")
    return g[top + pad:top + pad + side, left + pad:left + pad + side]


def _zoom(square: np.ndarray, crop: float) -> np.ndarray:
    """The centre of ``square`` without ``crop`` of its side on each edge."""
    q = int(round(square.shape[0] * crop))
    return square[q:square.shape[0] - q, q:square.shape[1] - q] if q else square


def _resize(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((side, side), Image.Resampling.BOX),
                      dtype=np.float32)


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


def signature(img: np.ndarray) -> Signature:
    """The audit's signature of one HxWx3 uint8 RGB image."""
    digest = hashlib.sha1(f"{img.shape}".encode() + np.ascontiguousarray(img).tobytes()).hexdigest()
    square = _centred(_gray(img))
    dct = np.stack([dctn(t, norm="ortho")[:_COEFFS, :_COEFFS].ravel()[1:]
                    for z in ZOOMS for t in dihedral(_resize(_zoom(square, z), _LOW))])
    dct /= np.linalg.norm(dct, axis=1, keepdims=True) + 1e-9
    detail = _detail(square)
    return Signature(digest, dct.astype(np.float32), detail, square.shape[0],
                     _window_norms(detail, _template(detail, _DETAIL).shape))


def _window_norms(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centred L2 norm of ``a`` over every window of ``shape`` (from integral images)."""
    h, w = shape
    a = a.astype(np.float64)

    def box(x: np.ndarray) -> np.ndarray:
        c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]

    s1, s2 = box(a), box(a * a)
    return np.sqrt(np.maximum(s2 - s1 * s1 / (h * w), 1e-12))


def _ncc_max(a: np.ndarray, t: np.ndarray, norms: np.ndarray | None = None) -> float:
    """Best normalised cross-correlation of template ``t`` over every placement inside ``a``."""
    t = t - t.mean()
    tn = float(np.sqrt((t * t).sum()))
    if tn < 1e-6:
        return 0.0
    num = correlate(a, t, mode="valid", method="fft")  # zoomed templates slide over hundreds of places
    if norms is None:
        norms = _window_norms(a, t.shape)
    return float((num / (norms * tn)).max())


def _template(a: np.ndarray, side: int) -> np.ndarray:
    b = a if side == a.shape[0] else _resize(a, side)
    q = int(round(side * (1 - _TEMPLATE) / 2))
    return b[q:side - q, q:side - q]


def verify(a: Signature, b: Signature, transform: int) -> float:
    """Detail correlation of ``b`` (under view ``transform`` of the DCT signature: ``D4`` view
    ``transform % 8`` of zoom ``ZOOMS[transform // 8]``) with ``a``, over shifts and scales.

    Scales: the same pixel size (a crop left as is) and the relative zooms of ``_VERIFY_ZOOMS``
    near the one the zoomed view proposes (that zoom of ``b`` looked like ``a``, so ``a`` shows
    ``b`` magnified; with no zoom proposed, either may be). The central part of the magnified
    image, shrunk by the zoom, is slid over the other, so either may be the crop of the other.
    """
    d4, hint = transform % 8, 1 / (1 - 2 * ZOOMS[transform // 8])
    zooms = {z for z in _VERIFY_ZOOMS if abs(np.log(z / hint)) <= 0.07}
    db = np.ascontiguousarray(dihedral(b.detail)[d4])
    nb = dihedral(b.norms)[d4]  # square windows: the norms transform with the image
    best = 0.0
    for x, y, sx, sy, norms, magnified in ((a.detail, db, a.side, b.side, a.norms, hint == 1),
                                           (db, a.detail, b.side, a.side, nb, True)):
        sides = {int(round(_DETAIL * sy / sx))}
        if magnified:
            sides |= {int(round(_DETAIL / z)) for z in zooms}
        for side in sides:
            t = _template(y, side)
            if 4 <= t.shape[0] <= _DETAIL:
                best = max(best, _ncc_max(x, t, norms if side == _DETAIL else None))
    return best


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
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    tasks = (delayed(_chunk_signatures)(c) for c in chunks)
    for part in Parallel(n_jobs=workers, return_as="generator")(tasks):
        for sig in part:
            yield sig
            advance(1)
