"""Training augmentation in torch on uint8 batches (no torchvision): one vectorised call per batch.

Cells have no up or down, so every batch gets random flips and 90-degree rotations; ``strength``
scales the rest: a small free rotation, zoom / shift (one affine resample), and brightness,
contrast, saturation and per-channel gain jitter (a cheap stand-in for stain variation).
``stain_jitter`` adds the stain itself: each image's haematoxylin, eosin and DAB concentrations are
scaled and shifted by up to that fraction (Tellez et al. 2018's HED jitter), the variation between labs.
Labels are untouched: the batch order is kept, each image is transformed on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from leukoscope.geometry import D4, view

#: Ranges at strength 1.0.
MAX_ANGLE = 30.0  # degrees, on top of the 90-degree rotations
MAX_ZOOM = 0.15   # scale in [1 - z, 1 + z]
MAX_SHIFT = 0.06  # fraction of the image
MAX_COLOUR = 0.12  # brightness / contrast / saturation factor in [1 - c, 1 + c]
MAX_GAIN = 0.04   # per-channel gain


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float in [0, 1]."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Same arithmetic as ``preprocess.normalize``, on a float [0, 1] NCHW tensor; channels_last out."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def _u(n: int, g: torch.Generator, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random view of ``geometry.D4`` per image (square images): a horizontal flip with
    probability 1/2, then ``k`` quarter turns."""
    n = x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    k = torch.randint(0, 4, (n,), generator=g)
    # turning a mirror image by k is mirroring the image turned by -k: D4 view (-k, mirrored)
    index = torch.where(flip, 2 * ((4 - k) % 4) + 1, 2 * k)
    out = x.clone()
    for v in range(1, len(D4)):
        sel = index == v
        if sel.any():
            out[sel] = view(x[sel], v, (2, 3))
    return out


def affine(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Free rotation, zoom and shift in one bilinear resample (reflected borders)."""
    n = x.shape[0]
    angle = _u(n, g) * math.radians(MAX_ANGLE * strength)
    scale = 1 + _u(n, g) * MAX_ZOOM * strength  # > 1 zooms out, < 1 zooms in
    tx, ty = (_u(n, g) * MAX_SHIFT * strength * 2 for _ in range(2))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and per-channel gain jitter; values stay in [0, 1]."""
    n = x.shape[0]
    c = MAX_COLOUR * strength
    gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    sat = (1 + _u(n, g) * c).view(n, 1, 1, 1)
    x = gray + (x - gray) * sat
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    con = (1 + _u(n, g) * c).view(n, 1, 1, 1)
    bri = (1 + _u(n, g) * c).view(n, 1, 1, 1)
    gain = 1 + (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * MAX_GAIN * strength
    return (((x - mean) * con + mean) * bri * gain).clamp_(0, 1)


#: Optical density is log(rgb) / log(_EPS): 0 for white, 1 for the darkest representable pixel.
_EPS = 1e-6
#: Stained pixels sit at optical densities of about 0.01 (pale background) to 0.1 (nucleus) on that
#: scale, so the additive part of the jitter is this fraction of ``sigma`` (else it floods the background).
HED_SHIFT = 0.05


def hed(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Stain jitter: per image, each HED stain concentration ``c -> c * a + b`` with ``a`` in
    [1 - sigma, 1 + sigma] and ``b`` in [-sigma, sigma] * HED_SHIFT (skimage's rgb2hed / hed2rgb in torch)."""
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    n = x.shape[0]
    to_hed = torch.as_tensor(hed_from_rgb, dtype=x.dtype)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=x.dtype)
    log_eps = math.log(_EPS)
    stains = torch.einsum("nchw,cd->ndhw", torch.log(x.clamp_min(_EPS)) / log_eps, to_hed)
    a = 1 + _u(3 * n, g).view(n, 3, 1, 1) * sigma
    b = _u(3 * n, g).view(n, 3, 1, 1) * sigma * HED_SHIFT
    od = torch.einsum("ndhw,dc->nchw", stains * a + b, to_rgb)
    return torch.exp(od * log_eps).clamp_(0, 1)


def augment(batch: torch.Tensor, strength: float, g: torch.Generator, stain_jitter: float = 0.0
            ) -> torch.Tensor:
    """uint8 NHWC batch -> augmented float [0, 1] NCHW batch (identity at ``strength <= 0``)."""
    x = to_float(batch)
    if strength <= 0:
        return x
    x = dihedral(x, g)
    x = affine(x, strength, g)
    x = colour(x, strength, g)
    return hed(x, stain_jitter, g) if stain_jitter > 0 else x
