"""Augmentations keep shapes, ranges, order (labels) and are reproducible."""

from __future__ import annotations

import numpy as np
import torch

from leukoscope.train.augment import augment


def _batch(n=6, size=32):
    rng = np.random.default_rng(0)
    # each image a distinct flat colour plus noise, so an image can be matched to its source
    base = rng.integers(20, 235, size=(n, 1, 1, 3))
    noise = rng.integers(-10, 10, size=(n, size, size, 3))
    return torch.from_numpy(np.clip(base + noise, 0, 255).astype(np.uint8))


def test_shapes_range_and_identity():
    x = _batch()
    out = augment(x, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    same = augment(x, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x.permute(0, 3, 1, 2).float() / 255)


def test_order_kept_so_labels_stay_valid():
    x = _batch()
    out = augment(x, 1.5, torch.Generator().manual_seed(1))
    src = x.float().mean(dim=(1, 2)) / 255  # N x 3 mean colours
    got = out.mean(dim=(2, 3))
    nearest = torch.cdist(got, src).argmin(dim=1)
    assert nearest.tolist() == list(range(len(x)))


def test_reproducible_with_a_seeded_generator():
    x = _batch()
    a = augment(x, 1.0, torch.Generator().manual_seed(3))
    b = augment(x, 1.0, torch.Generator().manual_seed(3))
    c = augment(x, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _cells(data, n=4):
    """Real PBC and DeepAPL neutrophils at 64 px (the two labs' stains), as one uint8 NHWC batch."""
    from PIL import Image

    from leukoscope.data.images import load_rgb

    files = sorted((data / "pbc" / "neutrophil").glob("*.jpg"))[:n // 2]
    deep = data / "deepapl" / "Data" / "All"
    files += sorted(deep.glob("*/**/Signed slides/Segmented neutrophils/*.jpg"))[:n // 2]
    small = [np.asarray(Image.fromarray(load_rgb(f)).resize((64, 64))) for f in files]
    return torch.from_numpy(np.stack(small))


def test_stain_jitter_is_exact_at_zero_and_moves_stains_by_about_sigma(data):
    from leukoscope.train.augment import hed, to_float

    x = to_float(_cells(data))
    assert torch.allclose(hed(x, 0.0, torch.Generator().manual_seed(0)), x, atol=1e-4)  # rgb -> HED -> rgb
    out = hed(x, 0.2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    shift = (out - x).abs().mean(dim=(1, 2, 3))
    assert bool((shift > 0.005).all()) and bool((shift < 0.15).all())  # a new stain, not a new picture


def test_augment_adds_stain_jitter_only_when_asked(data):
    x = _cells(data)
    plain = augment(x, 1.0, torch.Generator().manual_seed(5))
    again = augment(x, 1.0, torch.Generator().manual_seed(5), 0.0)
    jittered = augment(x, 1.0, torch.Generator().manual_seed(5), 0.2)
    assert torch.equal(plain, again) and not torch.allclose(plain, jittered, atol=1e-3)
