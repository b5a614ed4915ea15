"""Shared by the tests of bundle uses (predict, evaluate, explain, export): tiny real bundles.

Each is trained once per test process on the real C-NMC sample (52 training cells); tests that
change a bundle (export) work on a copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

_made: dict[str, Path] = {}


def cnmc_train(data: Path) -> Path:
    return data / "cnmc_sample" / "C-NMC_Leukemia" / "training_data"


def train_network(data: Path, out: Path) -> Path:
    """leukonet, 32 px, two epochs (seconds on 2 cores)."""
    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    m = read([data / "cnmc_sample"])
    cfg = TrainConfig.build(model="leukonet", epochs=2, img_size=32, batch_size=16, seed=0)
    return Path(train(m, cfg, out).path)


def train_classical(data: Path, out: Path) -> Path:
    """Logistic regression on handcrafted features, saved the way ``benchmark --save-best`` does."""
    from leukoscope.data.readers import read
    from leukoscope.leaderboard import benchmark, save_best

    lb, split, X = benchmark(read([data / "cnmc_sample"]), models=["logistic_regression"], k=2, jobs=1)
    return save_best(lb, split, X, out)


def _once(name: str, factory: pytest.TempPathFactory, build: Callable[[Path], Path]) -> Path:
    """Build once for the whole run: xdist workers share the base temp folder and wait on a lock."""
    from filelock import FileLock

    if name not in _made:
        base = factory.getbasetemp()
        root = base.parent if base.name.startswith("popen-gw") else base
        with FileLock(str(root / f"{name}.lock")):
            done = root / name / "done"
            if not done.is_file():
                shutil.rmtree(root / name, ignore_errors=True)
                (root / name).mkdir()
                done.write_text(str(build(root / name / "bundle")))
            _made[name] = Path(done.read_text())
    return _made[name]


@pytest.fixture(scope="session")
def network_bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained network bundle (do not modify: copy it first)."""
    return _once("use-net", tmp_path_factory, lambda out: train_network(data, out))


@pytest.fixture(scope="session")
def classical_bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained classical bundle (do not modify: copy it first)."""
    return _once("use-cls", tmp_path_factory, lambda out: train_classical(data, out))


@pytest.fixture(scope="session")
def onnx_bundle(network_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``network_bundle`` with model.onnx and model.int8.onnx."""
    from leukoscope.bundle.export import export_onnx

    def build(out: Path) -> Path:
        shutil.copytree(network_bundle, out)
        export_onnx(out, int8=True)
        return out

    return _once("use-onnx", tmp_path_factory, build)


def sample_paths(data: Path, n_allidb: int = 60) -> list[Path]:
    """Real cells in three formats: C-NMC BMP and PNG, ALL-IDB TIFF (every other one, up to n)."""
    bmp = sorted(cnmc_train(data).rglob("*.bmp"))
    png = sorted((data / "cnmc_cells").rglob("*.png"))
    tif = sorted((data / "allidb2").glob("*.tif"))[::2][:n_allidb]
    return bmp + png + tif
