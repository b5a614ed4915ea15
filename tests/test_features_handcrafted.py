"""Handcrafted features: known geometry in, right numbers out; real cells; the on-disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukoscope.data.manifest import make_manifest
from leukoscope.data.readers import read
from leukoscope.errors import ConfigError
from leukoscope.features import extract, from_spec, get_extractor, list_feature_kinds
from leukoscope.features.handcrafted import NAMES, Handcrafted, cell_features
from leukoscope.progress import Counting

BACKGROUNDS = {"smear": (232, 214, 220), "black": (0, 0, 0)}
CYTOPLASM, NUCLEUS = (190, 170, 215), (95, 45, 140)


def drawn_cell(size: int, cell_r: float, nuc_r: float, background: tuple[int, int, int],
               nuc_axes: tuple[float, float] | None = None) -> np.ndarray:
    """A round cell with a disk (or ellipse) nucleus at the centre, lightly noisy."""
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    img = np.empty((size, size, 3), np.float64)
    img[:] = background
    img[np.hypot(yy, xx) <= cell_r] = CYTOPLASM
    a, b = nuc_axes or (nuc_r, nuc_r)
    img[(xx / a) ** 2 + (yy / b) ** 2 <= 1] = NUCLEUS
    img += np.random.default_rng(0).normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def row(img: np.ndarray, size: int = 160) -> pd.Series:
    return pd.Series(cell_features(img, size), index=NAMES)


@pytest.mark.parametrize("background", sorted(BACKGROUNDS))
def test_disk_of_known_radius(background: str) -> None:
    r, big = 30, 50
    f = row(drawn_cell(160, big, r, BACKGROUNDS[background]))
    assert f["nucleus_area"] == pytest.approx(np.pi * r**2 / 160**2, rel=0.05)
    assert f["nucleus_circularity"] == pytest.approx(1.0, abs=0.06)
    assert f["nucleus_eccentricity"] < 0.2
    assert f["nucleus_solidity"] > 0.95
    assert f["cell_area"] == pytest.approx(np.pi * big**2 / 160**2, rel=0.06)
    assert f["nc_ratio"] == pytest.approx((r / big) ** 2, rel=0.1)
    assert f["nucleus_offset"] < 0.05
    assert f["nucleus_lab_b_mean"] < f["cytoplasm_lab_b_mean"]  # the nucleus is the bluer part


def test_measures_are_relative_to_the_image_so_resolution_does_not_matter() -> None:
    small = row(drawn_cell(160, 50, 30, BACKGROUNDS["smear"]))
    large = row(drawn_cell(400, 125, 75, BACKGROUNDS["smear"]))
    for name in ("nucleus_area", "cell_area", "nucleus_perimeter", "nc_ratio"):
        assert large[name] == pytest.approx(small[name], rel=0.05), name


def test_non_square_images_are_padded_not_stretched() -> None:
    square = row(drawn_cell(160, 50, 30, BACKGROUNDS["smear"]))
    wide = np.pad(drawn_cell(160, 50, 30, BACKGROUNDS["smear"]), ((0, 0), (40, 40), (0, 0)), mode="edge")
    f = row(wide)
    assert f["nucleus_eccentricity"] < 0.2 and f["nucleus_circularity"] == pytest.approx(1.0, abs=0.06)
    assert f["nucleus_area"] == pytest.approx(square["nucleus_area"] * (160 / 240) ** 2, rel=0.06)


def test_ellipse_eccentricity_and_axes() -> None:
    a, b = 40, 20
    f = row(drawn_cell(160, 60, 0, BACKGROUNDS["smear"], nuc_axes=(a, b)))
    assert f["nucleus_eccentricity"] == pytest.approx(np.sqrt(1 - (b / a) ** 2), abs=0.03)
    assert f["nucleus_major_axis"] == pytest.approx(2 * a / 160, rel=0.05)
    assert f["nucleus_minor_axis"] == pytest.approx(2 * b / 160, rel=0.05)
    assert f["nucleus_circularity"] < 0.9


def test_texture_and_histograms_are_well_formed() -> None:
    f = row(drawn_cell(160, 50, 30, BACKGROUNDS["smear"]))
    lbp = f[[n for n in NAMES if n.startswith("lbp_")]]
    assert lbp.sum() == pytest.approx(1.0)
    assert 0 < f["glcm_energy_d1"] <= 1 and 0 < f["glcm_homogeneity_d1"] <= 1
    assert f["field_nuclei_count"] == 1


def test_blank_image_gives_nan_not_an_error() -> None:
    out = Handcrafted().compute([np.full((64, 64, 3), 200, np.uint8), np.zeros((50, 70, 3), np.uint8)])
    assert out.shape == (2, len(NAMES)) and out.dtype == np.float32
    assert np.isnan(out[:, NAMES.index("nucleus_area")]).all()


def test_real_cells_segment(data: Path) -> None:
    m = read([data / "allidb2", data / "cnmc_cells"])
    paths = [m["path"].iloc[0], m["path"].iloc[-1], m.loc[m["label"] == "hem", "path"].iloc[-1]]
    from leukoscope.data.images import load_rgb

    out = pd.DataFrame(Handcrafted().compute([load_rgb(p) for p in paths]), columns=NAMES)
    assert out[["nucleus_area", "cell_area"]].notna().all().all()
    assert ((out["nc_ratio"] > 0.2) & (out["nc_ratio"] <= 1)).all()
    assert ((out["nucleus_area"] > 0.02) & (out["nucleus_area"] < 0.6)).all()


def test_registry_and_spec() -> None:
    assert "handcrafted" in list_feature_kinds()
    ex = get_extractor("handcrafted", size=96)
    assert from_spec(ex.spec()).params() == {"size": 96}
    assert len(ex.names()) == len(set(ex.names())) == len(NAMES)
    with pytest.raises(ConfigError, match="unknown feature kind"):
        get_extractor("nope")
    with pytest.raises(ConfigError, match="size"):
        get_extractor("handcrafted", size=4)
    with pytest.raises(ConfigError, match="bad parameters"):
        get_extractor("handcrafted", colour="red")


def test_cache_hit_and_skipped(synthetic2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = read([synthetic2]).iloc[:10]
    bad, twin = tmp_path / "broken.png", tmp_path / "broken-too.png"  # the same bytes: both listed
    for f in (bad, twin):
        f.write_bytes(b"not an image")
    m = make_manifest([*m[["path", "label"]].to_dict("records"), {"path": str(bad), "label": "blast"},
                       {"path": str(twin), "label": "normal"}])
    first, skipped = extract(m, "handcrafted", cache=tmp_path / "c", n_jobs=1, size=64)
    assert [p for p, _ in skipped] == [str(bad), str(twin)] and "not a readable image" in skipped[1][1]
    assert list(first.index) == list(range(10)) and list(first.columns) == NAMES

    def boom(self, images):  # a second run must not compute anything
        raise AssertionError("cache miss")

    monkeypatch.setattr(Handcrafted, "compute", boom)
    second, _ = extract(m, "handcrafted", cache=tmp_path / "c", n_jobs=1, size=64)
    pd.testing.assert_frame_equal(first, second)
    with pytest.raises(AssertionError, match="cache miss"):  # other params: another key
        extract(m, "handcrafted", cache=tmp_path / "c", n_jobs=1, size=80)

    monkeypatch.undo()  # a damaged entry is recomputed, and progress reaches the total
    next((tmp_path / "c" / "features").glob("handcrafted-*/*.npy")).write_bytes(b"torn write")
    seen = []
    third, _ = extract(m, "handcrafted", cache=tmp_path / "c", n_jobs=1, size=64,
                       progress=Counting(lambda done, total: seen.append((done, total))))
    pd.testing.assert_frame_equal(first, third)
    assert seen[-1] == (12, 12)


def test_parallel_equals_serial(synthetic2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from leukoscope.features import cache

    monkeypatch.setattr(cache, "_MIN_PARALLEL", 8)  # worker processes even for a small set
    m = read([synthetic2]).iloc[::3]
    par, _ = extract(m, "handcrafted", cache=tmp_path / "a", n_jobs=2, size=64)
    ser, _ = extract(m, "handcrafted", cache=tmp_path / "b", n_jobs=1, size=64)
    assert len(par) == len(m) >= 16
    np.testing.assert_allclose(par.to_numpy(), ser.to_numpy(), equal_nan=True)
