"""Image geometry shared by every layer: the dihedral group of a square and the black background.

Cells have no up or down, so the eight flips / 90-degree rotations of an image (the dihedral
group D4) show the same cell: training augments with them, prediction averages over them and the
audit matches copies under them. They are listed once, here, in one order.

C-NMC cells are cut out onto a black surround; pixels at or below ``BACKGROUND_LEVEL`` are that
surround, not the cell.

This module is the bottom layer: it imports nothing of leukoscope (and not torch).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

#: The dihedral group as (quarter turns, then mirrored left-right); index 0 is the identity.
D4: tuple[tuple[int, bool], ...] = tuple((k, mirrored) for k in range(4) for mirrored in (False, True))
#: Gray level (0-255) at or below which a pixel of a cell crop on black is background.
BACKGROUND_LEVEL = 12

A = TypeVar("A")


def dihedral(a: A, axes: tuple[int, int] = (0, 1)) -> list[A]:
    """The eight views of ``a`` in ``D4``'s order, rotating and mirroring the two ``axes``.

    ``a`` is a numpy array (views are returned, not copies) or a torch tensor (through its own
    methods, so torch is not imported here).
    """
    x: Any = a
    numpy = isinstance(x, np.ndarray)
    views: list[Any] = []
    for k, mirrored in D4:
        r = np.rot90(x, k, axes) if numpy else x.rot90(k, axes)
        if mirrored:
            r = np.flip(r, axes[1]) if numpy else r.flip((axes[1],))
        views.append(r)
    return views


def inverse(view: int) -> int:
    """Index in ``D4`` of the inverse of view ``view``: mirrors undo themselves, and a quarter
    turn one way is undone by three."""
    k, mirrored = D4[view]
    return D4.index((k, True) if mirrored else ((4 - k) % 4, False))


def foreground(img: np.ndarray, level: float = BACKGROUND_LEVEL, channel_axis: int | None = -1
               ) -> np.ndarray:
    """Mask of the pixels brighter than ``level`` (the cell, on a black surround): by their
    brightest channel, or by their value when ``channel_axis`` is None (a gray image, or another
    lightness such as L*, ``level`` then in its units)."""
    return (img if channel_axis is None else img.max(axis=channel_axis)) > level
