"""A tiny real ALL-IDB2 network bundle, trained once per test run: C-NMC cells are foreign to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from use_support import _once


def train_allidb2(data: Path, out: Path) -> Path:
    """leukonet, 32 px, two epochs on ALL-IDB2's 260 cells (seconds on 2 cores)."""
    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    cfg = TrainConfig.build(model="leukonet", epochs=2, img_size=32, batch_size=16, seed=0)
    return Path(train(read([data / "allidb2"]), cfg, out).path)


@pytest.fixture(scope="session")
def allidb2_bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained ALL-IDB2 network bundle (do not modify: copy it first)."""
    return _once("unf-allidb2", tmp_path_factory, lambda out: train_allidb2(data, out))
