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
