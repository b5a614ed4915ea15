"""Shared by the server tests: a real tiny network bundle and real sample images."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium); "
                    "the browser test needs it and never downloads a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def train_tiny_network(data: Path, out: Path) -> Path:
    """One epoch of leukonet at 32 px on the 52 real C-NMC training cells (a few seconds on 2 cores)."""
    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    m = read([data / "cnmc_sample"])
    return Path(train(m, TrainConfig.build(model="leukonet", epochs=1, img_size=32, batch_size=16,
                                           seed=0), out).path)


@pytest.fixture(scope="session")
def network_bundle(data: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """Trained once per test run, however many modules import this fixture and however many
    pytest-xdist workers run them (they share the session's base temp folder, under a lock)."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # the parent is this run's, per worker
    with (shared / "serve-bundle.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return train_tiny_network(data, shared / "serve-run")  # a finished run is only reloaded


def sample_images(data: Path) -> dict[str, Path]:
    """One real cell image per container format the data sets use."""
    return {
        "bmp": next((data / "cnmc_sample" / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all")
                    .glob("*.bmp")),
        "png": next((data / "cnmc_cells" / "hem").glob("*.png")),
        "jpeg": next((data / "aria_all" / "Benign").glob("*.jpg")),
        "tiff": data / "allidb2" / "Im001_1.tif",
    }
