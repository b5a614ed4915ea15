"""Data layer: readers that produce a Manifest, image decoding, splits and synthetic cells.

``LAYOUTS`` holds the on-disk layouts ``read`` knows, in the order ``detect_layout`` tries them;
each reader registers itself in ``data/readers.py`` with ``@layout(name, detect)``. The names are
declared here so that listing them (``--layout`` in ``--help``) imports neither pandas nor Pillow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from leukoscope.registry import Registry

if TYPE_CHECKING:
    from leukoscope.data.readers import Layout

LAYOUTS: Registry[Layout] = Registry("layout", dict.fromkeys(
    ("cnmc", "label-in-name", "cohort", "class-folders", "csv"), "leukoscope.data.readers"))
