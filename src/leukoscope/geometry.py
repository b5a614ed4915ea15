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


def view(a: A, index: int, axes: tuple[int, int] = (0, 1)) -> A:
    """View ``index`` of ``D4`` of ``a``: its quarter turns of the two ``axes``, then the mirror of
    the second.

    ``a`` is a numpy array (a view is returned, not a copy) or a torch tensor (through its own
    methods, so torch is not imported here).
    """
    x: Any = a
    k, mirrored = D4[index]
    if isinstance(x, np.ndarray):
        r: Any = np.rot90(x, k, axes)
        return np.flip(r, axes[1]) if mirrored else r
    r = x.rot90(k, axes)
    return r.flip((axes[1],)) if mirrored else r


def dihedral(a: A, axes: tuple[int, int] = (0, 1)) -> list[A]:
    """The eight views of ``a`` in ``D4``'s order (see ``view``)."""
    return [view(a, i, axes) for i in range(len(D4))]


def foreground(img: np.ndarray, level: float = BACKGROUND_LEVEL, channel_axis: int | None = -1
               ) -> np.ndarray:
    """Mask of the pixels brighter than ``level`` (the cell, on a black surround): by their
    brightest channel, or by their value when ``channel_axis`` is None (a gray image, or another
    lightness such as L*, ``level`` then in its units)."""
    return (img if channel_axis is None else img.max(axis=channel_axis)) > level
