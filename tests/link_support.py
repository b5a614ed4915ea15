"""Real cells gathered into a tmp folder by hard link (a copy where links are impossible): data sets stay
read-only and nothing is duplicated on disk."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def link_files(files: Iterable[Path], folder: Path) -> Path:
    """Each of ``files`` into ``folder`` under its own name; ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in files:
        try:
            os.link(p, folder / p.name)
        except OSError:
            shutil.copy2(p, folder / p.name)
    return folder


def allidb2_cells(data: Path, folder: Path, per_class: int, step: int) -> Path:
    """``per_class`` blasts (``_1``) and as many normal cells (``_0``) of ALL-IDB2, every ``step``-th."""
    found = sorted((data / "allidb2").glob("*.tif"))
    picked = [p for y in ("_1", "_0") for p in [q for q in found if q.stem.endswith(y)][::step][:per_class]]
    return link_files(picked, folder)
