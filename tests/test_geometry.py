"""leukoscope.geometry: one dihedral group for numpy and torch, and the black-background mask."""

from __future__ import annotations

import numpy as np
import torch

from leukoscope.geometry import BACKGROUND_LEVEL, D4, dihedral, foreground


def test_the_eight_views_are_distinct_and_in_one_order() -> None:
    a = np.arange(9).reshape(3, 3)
    views = dihedral(a)
    assert len(views) == len(D4) == 8 and np.array_equal(views[0], a)
    assert len({v.tobytes() for v in map(np.ascontiguousarray, views)}) == 8
    assert np.array_equal(views[1], a[:, ::-1]) and np.array_equal(views[2], np.rot90(a))


def test_torch_and_numpy_views_agree() -> None:
    x = np.random.default_rng(0).random((2, 3, 5, 5)).astype(np.float32)
    for v, t in zip(dihedral(x, (2, 3)), dihedral(torch.from_numpy(x), (2, 3)), strict=True):
        assert np.array_equal(np.ascontiguousarray(v), t.numpy())


def test_foreground_by_brightest_channel_or_value() -> None:
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (0, 0, BACKGROUND_LEVEL + 1)
    img[1, 1] = (BACKGROUND_LEVEL,) * 3
    assert foreground(img).tolist() == [[True, False], [False, False]]
    assert foreground(np.array([[5.0, 9.0]]), 7.5, channel_axis=None).tolist() == [[False, True]]
