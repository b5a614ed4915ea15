"""The one preprocessing: shapes, arithmetic, crop-to-cell on real C-NMC crops, grayscale, stain."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from leukoscope.data.images import load_rgb
from leukoscope.data.readers import read
from leukoscope.models import preprocess, stain


def _cnmc_images(data, n=3):
    m = read([data / "cnmc_cells"])
    return [load_rgb(p) for p in m["path"][:n]]


def test_prepare_shape_and_arithmetic(data):
    imgs = _cnmc_images(data, 2)
    cfg = preprocess.preprocessing_config(48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = preprocess.prepare(imgs, cfg)
    assert x.shape == (2, 3, 48, 48) and x.dtype == np.float32
    u = preprocess.to_uint8(imgs, cfg)
    expect = (u[1, 10, 20, 2] / 255.0 - 0.5) / 0.25
    assert x[1, 2, 10, 20] == pytest.approx(expect, abs=1e-6)
    # a whole bundle config works as well as its preprocessing section
    assert np.array_equal(preprocess.prepare(imgs, {"preprocessing": cfg}), x)


def test_crop_to_cell_on_black_background(data):
    img = _cnmc_images(data, 1)[0]
    crop = preprocess.crop_to_cell(img)
    assert crop.shape[0] == crop.shape[1] < img.shape[0]
    # the crop keeps the cell: almost all foreground pixels survive
    fg = (img.max(axis=2) > preprocess.BACKGROUND_LEVEL).sum()
    assert (crop.max(axis=2) > preprocess.BACKGROUND_LEVEL).sum() >= 0.97 * fg
    # an image without black background is left alone
    aria = load_rgb(next((data / "aria_all" / "Benign").iterdir()))
    assert preprocess.crop_to_cell(aria) is aria


def test_grayscale_replicates_channels(data):
    cfg = preprocess.preprocessing_config(32, grayscale=True)
    u = preprocess.to_uint8(_cnmc_images(data, 1), cfg)
    assert np.array_equal(u[..., 0], u[..., 1]) and np.array_equal(u[..., 1], u[..., 2])


def test_torch_and_numpy_normalisation_agree(data):
    import torch

    from leukoscope.train.augment import normalize, to_float

    cfg = preprocess.preprocessing_config(40)
    u = preprocess.to_uint8(_cnmc_images(data, 2), cfg)
    a = preprocess.normalize(u, cfg)
    b = normalize(to_float(torch.from_numpy(u)), cfg["mean"], cfg["std"]).numpy()
    assert np.allclose(a, b, atol=1e-5)


def test_preprocess_does_not_import_torch():
    code = ("import sys, leukoscope.models.preprocess, leukoscope.models.stain; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("method", ["reinhard", "macenko", "greyworld"])
def test_stain_normalisation_moves_towards_target(data, method):
    m = read([data / "allidb2"])
    imgs = [preprocess.to_uint8([load_rgb(p)], {"input_size": 64})[0] for p in m["path"][:6]]
    target = stain.fit(imgs[:4], method)
    assert target["method"] == method
    out = stain.apply(imgs[5], target)
    assert out.shape == imgs[5].shape and out.dtype == np.uint8
    cfg = preprocess.preprocessing_config(64, stain=target)
    assert np.array_equal(preprocess.to_uint8([imgs[5]], cfg)[0], out)
    assert stain.apply(imgs[5], {"method": "none"}) is imgs[5]
