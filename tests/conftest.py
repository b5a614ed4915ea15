"""Shared fixtures: the real data root, synthetic cell sets, and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from leukoscope.data.synthetic import make_synthetic
from leukoscope.settings import data_root


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session gets its own feature / decode cache, never the user's."""
    import os

    os.environ["LEUKOSCOPE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture(scope="session")
def data() -> Path:
    """The real sample data sets (``$LEUKOSCOPE_DATA``, default ../shared/data)."""
    root = data_root()
    if not (root / "aria_all").is_dir():
        pytest.fail(f"real data not found at {root}; set LEUKOSCOPE_DATA")
    return root


@pytest.fixture(scope="session")
def synthetic2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small two-class SYNTHETIC set: 8 subjects x 6 cells, 64 px."""
    return make_synthetic(tmp_path_factory.mktemp("syn2") / "cells", n_subjects=8,
                          per_subject=6, n_classes=2, size=64, seed=1)


@pytest.fixture(scope="session")
def synthetic4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small four-class SYNTHETIC set: 12 subjects x 5 cells, 64 px."""
    return make_synthetic(tmp_path_factory.mktemp("syn4") / "cells", n_subjects=12,
                          per_subject=5, n_classes=4, size=64, seed=2)
