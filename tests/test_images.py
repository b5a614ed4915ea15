"""Safe decoding: real files of every format, every PIL mode to RGB, and each kind of bad file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefiles import png_bytes, tiff_with_a_rational_strip_offset, truncated_copy
from leukoscope.data import images
from leukoscope.data.images import (
    DecodeCache,
    decode_rgb,
    file_digest,
    iter_image_files,
    load_rgb,
    probe,
    resize_square,
)
from leukoscope.errors import ImageError

REAL = {
    "bmp": "cnmc_sample/C-NMC_Leukemia/training_data/fold_0/all/UID_1_1_1_all.bmp",
    "png": "cnmc_cells/hem/UID_H6_5_1_hem.png",
    "tif": "allidb2/Im001_1.tif",
    "jpg": "aria_all/Benign/WBC-Benign-001.jpg",
}


@pytest.mark.parametrize("kind", sorted(REAL))
def test_real_files_decode_to_rgb_uint8(data: Path, kind: str) -> None:
    path = data / REAL[kind]
    img = load_rgb(path)
    with Image.open(path) as im:
        assert img.shape == (im.size[1], im.size[0], 3)
        ref = np.asarray(im.convert("RGB"))
    assert img.dtype == np.uint8
    assert np.array_equal(img, ref)
    assert img.std() > 5  # a real picture, not a blank


@pytest.mark.parametrize("kind", sorted(REAL))
def test_truncated_real_file_is_one_error_naming_it(data: Path, tmp_path: Path, kind: str) -> None:
    bad = truncated_copy(data / REAL[kind], tmp_path / f"cut.{kind}", keep=0.4)
    with pytest.raises(ImageError, match="cut") as e:
        load_rgb(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_corrupted_png_data_is_an_error(data: Path, tmp_path: Path) -> None:
    raw = bytearray((data / REAL["png"]).read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64  # damage the compressed pixel data
    bad = tmp_path / "damaged.png"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match="damaged.png"):
        load_rgb(bad)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_non_image_with_image_extension(tmp_path: Path, suffix: str) -> None:
    fake = tmp_path / f"notes{suffix}"
    fake.write_text("patient notes, not a picture\n")
    with pytest.raises(ImageError, match=r"notes.*not a readable image"):
        load_rgb(fake)


def test_zero_byte_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(ImageError, match=r"empty.png: empty file"):
        load_rgb(empty)
    with pytest.raises(ImageError, match="gone.png: file not found"):
        load_rgb(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="upload: empty file"):
        decode_rgb(b"")


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    a = np.zeros((2, 3, 4), np.uint8)
    a[..., :3] = (200, 100, 50)
    a[..., 3] = [[255, 0, 128], [255, 255, 255]]
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    img = load_rgb(tmp_path / "rgba.png")
    assert img.shape == (2, 3, 3)
    assert img[0, 0].tolist() == [200, 100, 50]
    assert img[0, 1].tolist() == [0, 0, 0]
    assert img[0, 2].tolist() == [100, 50, 25]


def test_grayscale_8_bit_and_grey_alpha(tmp_path: Path) -> None:
    g = np.array([[0, 77, 255]], np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    assert load_rgb(tmp_path / "g.png")[0].tolist() == [[0] * 3, [77] * 3, [255] * 3]
    la = np.stack([g, np.full_like(g, 255)], axis=-1)
    (tmp_path / "la.png").write_bytes(png_bytes(la, colour_type=4))
    assert load_rgb(tmp_path / "la.png")[0, :, 0].tolist() == [0, 77, 255]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    g = np.array([[0, 1000, 32768, 65535]], np.uint16)
    for name, write in [("g16.png", lambda p: p.write_bytes(png_bytes(g, bit_depth=16, colour_type=0))),
                        ("g16.tif", lambda p: Image.fromarray(g).save(p))]:
        write(tmp_path / name)
        img = load_rgb(tmp_path / name)
        assert img.dtype == np.uint8
        assert img[0, :, 0].tolist() == pytest.approx([0, 4, 128, 255], abs=1), name
        assert (img[..., 0] == img[..., 2]).all()


def test_16_bit_and_float_are_scaled_by_their_type_not_their_content(tmp_path: Path) -> None:
    """Two 16-bit files one grey level apart in one pixel decode alike; a float image reads as 0..1."""
    dim = np.full((4, 4), 200, np.uint16)
    for top in (255, 256):
        dim[0, 0] = top
        Image.fromarray(dim).save(tmp_path / f"max{top}.png")
    low, high = (load_rgb(tmp_path / f"max{top}.png") for top in (255, 256))
    assert np.abs(low.astype(int) - high).max() <= 1 and low[1, 1, 0] == 0  # 200 of 65535: near black
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "unit.tif")
    assert load_rgb(tmp_path / "unit.tif")[0, :, 0].tolist() == [0, 127, 255]


def test_16_bit_rgb_keeps_colour(tmp_path: Path) -> None:
    rgb16 = np.array([[[65535, 0, 0], [0, 32896, 0], [0, 0, 65535]]], np.uint16)
    (tmp_path / "rgb48.png").write_bytes(png_bytes(rgb16, bit_depth=16, colour_type=2))
    img = load_rgb(tmp_path / "rgb48.png")
    assert img[0].tolist() == [[255, 0, 0], [0, 128, 0], [0, 0, 255]]


def test_palette_images_map_to_their_colours(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([10, 20, 30, 200, 0, 100, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "pal.png")
    im.save(tmp_path / "pal.gif")
    im.save(tmp_path / "pal_t.png", transparency=1)
    for name in ("pal.png", "pal.gif"):
        assert load_rgb(tmp_path / name)[0].tolist() == [[10, 20, 30], [200, 0, 100], [0, 255, 0]], name
    assert load_rgb(tmp_path / "pal_t.png")[0].tolist() == [[10, 20, 30], [0, 0, 0], [0, 255, 0]]


def test_bilevel_and_cmyk(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(tmp_path / "bw.png")
    assert load_rgb(tmp_path / "bw.png")[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.tif")
    assert (load_rgb(tmp_path / "cmyk.tif") == 255).all()


def test_pixel_limit_header_only_giant(tmp_path: Path) -> None:
    for side in (9_000, 40_000):  # above our limit; far above Pillow's own bomb guard
        giant = tmp_path / f"giant{side}.png"
        giant.write_bytes(png_bytes(None, width=side, height=side))
        assert giant.stat().st_size < 100
        with pytest.raises(ImageError, match=rf"giant{side}.png: .*(exceeds the limit|bomb)"):
            load_rgb(giant)


def test_pixel_limit_is_a_module_setting(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = data / REAL["png"]
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match=r"450x450 pixels exceeds the limit of 10,000"):
        load_rgb(path)
    assert load_rgb(path, max_pixels=450 * 450).shape == (450, 450, 3)
    with pytest.raises(ImageError, match="upload"):
        decode_rgb(path.read_bytes())


def _long_thin_png(path: Path) -> Path:
    """A real 100000x10 PNG (about 3 KB): few pixels, but a 100000-pixel square once padded."""
    Image.new("RGB", (100_000, 10), (200, 30, 90)).save(path)
    assert path.stat().st_size < 10_000
    return path


def test_long_thin_image_is_refused_before_decoding(tmp_path: Path) -> None:
    wide = _long_thin_png(tmp_path / "wide.png")
    message = r"wide.png: 100000x10 pixels exceeds the limit of 64,000,000 once padded square"
    with pytest.raises(ImageError, match=message):
        load_rgb(wide)
    with pytest.raises(ImageError, match=message):
        probe(wide)
    with pytest.raises(ImageError, match=r"wide.png: 100000x10 pixels exceeds the limit of 4,000,000 once"):
        decode_rgb(wide.read_bytes(), "wide.png", max_pixels=4_000_000)
    # the square of the longest side is what counts: 2000x10 fits 4,000,000, 2001x10 does not
    Image.new("RGB", (2000, 10)).save(tmp_path / "ok.png")
    assert load_rgb(tmp_path / "ok.png", max_pixels=4_000_000).shape == (10, 2000, 3)
    Image.new("RGB", (10, 2001)).save(tmp_path / "tall.png")
    with pytest.raises(ImageError, match=r"tall.png: 10x2001 .* \(longest side at most 2,000\)"):
        load_rgb(tmp_path / "tall.png", max_pixels=4_000_000)


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 16 lineto stroke
showpage
%%EOF
"""


def test_only_the_accepted_formats_are_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An EPS file named like a cell image is refused without running Ghostscript."""
    from PIL import EpsImagePlugin

    # A stand-in ``gs`` first on PATH records any call; Pillow looks gs up again once its cache is reset.
    bin_dir, called = tmp_path / "bin", tmp_path / "gs-was-called"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    eps = tmp_path / "cell.png"
    eps.write_bytes(EPS)
    with pytest.raises(ImageError, match="cell.png: not a readable image"):
        load_rgb(eps)
    with pytest.raises(ImageError, match="upload.jpg: not a readable image"):
        decode_rgb(EPS, "upload.jpg")
    assert not called.exists()


def test_decode_bytes_ignores_the_name_suffix(data: Path) -> None:
    raw = (data / REAL["tif"]).read_bytes()
    assert np.array_equal(decode_rgb(raw, "mislabelled.png"), load_rgb(data / REAL["tif"]))
    with pytest.raises(ImageError, match="x.png: not a readable image"):
        decode_rgb(b"GIF89a-but-not-really", "x.png")


def test_paths_with_spaces_and_non_ascii(data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "Zellen für Tëst" / "[Malignant] Pre-B"
    folder.mkdir(parents=True)
    target = folder / "blast cell ✓ 01.jpg"
    target.write_bytes((data / REAL["jpg"]).read_bytes())
    assert np.array_equal(load_rgb(target), load_rgb(data / REAL["jpg"]))
    assert probe(target) == (224, 224, "RGB")


def test_iter_image_files_sorted_recursive_and_filtered(tmp_path: Path) -> None:
    for rel in ["b/2.PNG", "b/1.jpg", "a/x.tif", "a/.hidden.png", "a/readme.txt", "c.bmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    assert found == ["c.bmp", "a/x.tif", "b/1.jpg", "b/2.PNG"]


def test_resize_square_and_decode_cache(data: Path, tmp_path: Path) -> None:
    path = data / REAL["bmp"]
    small = resize_square(load_rgb(path), 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    cache = DecodeCache(tmp_path / "cache", 64)
    first = cache.get(path)
    assert np.array_equal(first, small)
    stored = list((tmp_path / "cache" / "decoded-64").glob("*.npy"))
    assert [p.stem for p in stored] == [file_digest(path)]
    assert np.array_equal(cache.get(path), first)  # served from disk the second time
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_decoding_never_swaps_the_process_warning_filters(data: Path) -> None:
    """Two threads decode at once (predict), so decoding must not replace ``warnings.filters`` even
    for a moment, as a ``warnings.catch_warnings`` per file did (threads could restore each other's)."""
    import threading
    import warnings

    paths = sorted((data / "aria_all" / "Benign").glob("*.jpg"))[:150]
    start, seen, done = id(warnings.filters), set(), threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.add(id(warnings.filters))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ok, _, skipped = images.load_batch(paths)
    finally:
        done.set()
        watcher.join()
    assert len(ok) == len(paths) and not skipped
    assert seen == {start}


def test_a_tiff_whose_tag_has_the_wrong_type_is_one_error(tmp_path: Path) -> None:
    """Pillow fails on a malformed tag with a TypeError: one ImageError naming the file, and in a batch a
    skip (it aborted predict and gave the web server a 500)."""
    from leukoscope.data.images import load_batch

    bad = tmp_path / "tag.tif"
    bad.write_bytes(tiff_with_a_rational_strip_offset())
    with pytest.raises(ImageError, match=r"tag.tif: cannot decode image \('IFDRational' object"):
        load_rgb(bad)
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    ok, arrays, skipped = load_batch([str(good), str(bad)])
    assert list(ok) == [str(good)] and len(arrays) == 1 and [p for p, _ in skipped] == [str(bad)]
