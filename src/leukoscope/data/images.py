"""Safe image decoding: every mode to 8-bit RGB, a pixel limit, and a resized decode cache.

All pixel data in leukoscope flows through ``load_rgb`` / ``decode_rgb`` so that RGBA, 16-bit,
grayscale and palette images are read the same way everywhere, and a corrupt or hostile file
becomes one ``ImageError`` naming it rather than a traceback.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

# The plugins of FORMATS are imported by name: ``Image.open(formats=FORMATS)`` finding one of them
# unregistered imports all forty-odd plugins (a third of a second at every start).
from PIL import (  # noqa: F401
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from leukoscope.errors import ImageError
from leukoscope.io import atomic_path

IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp"}
#: The Pillow formats of those suffixes, and the only ones ever decoded: content decides the
#: format, so without this list a file named ``cell.png`` could reach any Pillow plugin (EPS would
#: run Ghostscript).
FORMATS = ("BMP", "PNG", "JPEG", "TIFF", "GIF", "WEBP")
#: Decompression-bomb guard: refuse images above this many pixels, or whose square (longest side
#: squared) is above it (at most 8k x 8k); read at call time, so ``max_pixels=None`` (the default)
#: always means the current module setting.
MAX_PIXELS = 64_000_000
# Pillow's warnings about a file are not for the user: the size limit is ``_check_size``'s (it names
# the size; Pillow's hard limit still raises) and a file Pillow cannot read raises an error naming it.
# Ignored once, where Pillow raises them: a ``warnings.catch_warnings`` per decode swapped the
# process-wide filters from threads that decode at once (``predict``), which could leave them changed.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: Path) -> bool:
    """True for a regular, non-hidden file with an image extension."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def real_path(path: Path | str) -> str:
    """The absolute path with every link followed, as a string. A link that leads nowhere or in a circle
    (``Path.resolve`` raises on one) stays the link's own path, so that reading it later skips it with a
    reason naming the file in the data set, not a target that does not exist."""
    real = os.path.realpath(path)
    return real if os.path.exists(real) else os.path.abspath(path)


def walk_folders(root: Path | str, hidden: bool = True) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of ``root`` in sorted order, following symlinked folders (data assembled from links to
    folders is still data), each real folder once, as first reached: a link back to an ancestor would
    otherwise never end, and two links to one folder would count its files twice. Without ``hidden``,
    folders whose name starts with a dot are left out."""
    seen: set[str] = set()
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if hidden or not d.startswith("."))
        yield dirpath, dirs, sorted(files)


def iter_image_files(folder: Path) -> Iterator[Path]:
    """Image files under ``folder``, recursively, in a stable (sorted) order; a link named like an image
    that leads nowhere (or in a circle) too, so that batch work counts it as a skip instead of losing it."""
    for root, _, files in walk_folders(folder):
        for name in files:
            p = Path(root) / name
            if is_image_file(p) or _broken_link(p):
                yield p


def _broken_link(p: Path) -> bool:
    return p.is_symlink() and not p.exists() and p.suffix.lower() in IMAGE_SUFFIXES \
        and not p.name.startswith(".")


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Convert any PIL mode to an HxWx3 uint8 array (alpha composited on black).

    Integer gray images are scaled by their bit depth (16 bits: 0..65535, also for Pillow's 32-bit
    ``I``), never by their content: one brighter pixel must not turn a cell black. Float images are
    read as 0..1, the usual convention, unless their values leave it (then 0..255, else 0..65535). A
    float image with NaN or infinite pixels is refused (``name`` labels the error): they have no gray
    level, and the cast would make garbage pixels of them.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ImageError(f"{name}: not a readable image (NaN or infinite pixel values)")
        hi = a.max(initial=0.0)
        scale = (65535.0 if im.mode != "F" or hi > 255 else 255.0 if hi > 1 else 1.0)
        g = np.clip(a / scale * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        # in integers, 2 bytes a sample rather than float32's 4 (plus temporaries); x * a / 255 is
        # never exactly half-way, so adding 127 before the floor division rounds as np.round would
        rgba = np.asarray(im.convert("RGBA"))
        rgb = rgba[..., :3] * rgba[..., 3:4].astype(np.uint16)  # at most 255 * 255 + 127 below
        rgb += 127
        rgb //= 255
        return rgb.astype(np.uint8)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def _check_size(name: str, w: int, h: int, max_pixels: int) -> None:
    """Refuse a size from the header alone, before any pixel is allocated.

    Audit signatures and crop-to-cell pad an image to a square, so the limit bounds that square
    too: a 3 KB PNG of 100000x10 pixels would otherwise become a 100000x100000 array.
    """
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has zero size")
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} pixels exceeds the limit of {max_pixels:,}")
    if max(w, h) ** 2 > max_pixels:
        raise ImageError(f"{name}: {w}x{h} pixels exceeds the limit of {max_pixels:,} once padded "
                         f"square (longest side at most {math.isqrt(max_pixels):,})")


@contextmanager
def _pil_errors(name: str, max_pixels: int | None = None) -> Iterator[None]:
    """Turn every way Pillow fails on a file into one ``ImageError`` naming it (and the limit of pixels
    it was read under, where Pillow's own guard refused it first)."""
    try:
        yield
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image") from None
    except Image.DecompressionBombError:
        limit = MAX_PIXELS if max_pixels is None else max_pixels
        raise ImageError(f"{name}: its header declares more pixels than the limit of {limit:,} "
                         "(decompression-bomb guard)") from None
    except (OSError, ValueError, SyntaxError, TypeError, IndexError, ZeroDivisionError, struct.error) as e:
        # a malformed header or tag: Pillow's decoders fail in all of these ways (a fuzzed TIFF: TypeError)
        raise ImageError(f"{name}: cannot decode image ({e})") from None


def _open(source: Path | io.BytesIO, name: str, max_pixels: int | None,
          size: int | None = None) -> tuple[np.ndarray, str]:
    """The one place pixels are decoded: accepted formats only, size checked from the header first.

    ``size``: the square side the image is for. An RGB image is resized to ``size`` x ``size`` here,
    on Pillow's image, exactly as ``resize_square`` would resize its array (without the two copies
    between them). Always from the whole decode: libjpeg's reduced-scale decoding of a large JPEG is a
    fraction of the work but other pixels, and a network fine-tuned on whole decodes moved a PBC cell's
    probability by up to 0.29 and 2 of 172 calls on them, so predict would disagree with training.
    Returns the RGB array and the file's own PIL mode.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    with _pil_errors(name, max_pixels), Image.open(source, formats=FORMATS) as im:
        _check_size(name, *im.size, max_pixels)
        mode = im.mode  # as the header says (loading may change it for some formats)
        im.load()
        if size and im.mode == "RGB" and im.size != (size, size):
            return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)), mode
        rgb = _to_rgb(im, name)
    return (resize_square(rgb, size) if size else rgb), mode


def _read(path: Path | str, max_pixels: int | None, size: int | None = None) -> tuple[np.ndarray, str]:
    p = Path(path)
    if not p.exists():
        why = "broken link (no target, or links in a circle)" if p.is_symlink() else "file not found"
        raise ImageError(f"{p}: {why}")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: empty file (0 bytes)")
    return _open(p, str(p), max_pixels, size)


def image_size(source: Path | str | bytes, name: str = "upload") -> tuple[int, int]:
    """Width and height from the header alone, nothing decoded.

    Cheap enough to sort thousands of files by size (cells from whole-field overviews) and to
    budget an upload's pixels before decoding any; ``name`` labels bytes in errors.
    """
    if isinstance(source, bytes):
        src: Path | io.BytesIO = io.BytesIO(source)
    else:
        src = Path(source)
        name = str(src)
        if src.stat().st_size == 0:
            raise ImageError(f"{src}: empty file (0 bytes)")
    with _pil_errors(name), Image.open(src, formats=FORMATS) as im:
        return im.size


def load_rgb(path: Path | str, max_pixels: int | None = None, size: int | None = None) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB, or raise ``ImageError`` naming the file.

    ``size``: resized to ``size`` x ``size`` (bilinear, the same pixels as ``resize_square``).
    """
    return _read(path, max_pixels, size)[0]


def decode_rgb(data: bytes, name: str = "upload", max_pixels: int | None = None) -> np.ndarray:
    """Decode image bytes (an upload) to HxWx3 uint8 RGB; the type comes from content only."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return _open(io.BytesIO(data), name, max_pixels)[0]


P = TypeVar("P", str, Path)


def load_batch(paths: Sequence[P], size: int | None = None
               ) -> tuple[list[P], list[np.ndarray], list[tuple[str, str]]]:
    """Decode several files: the readable paths, their images, and ``(path, reason)`` for the rest.

    ``size``: as in ``load_rgb``.
    """
    ok: list[P] = []
    images: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for p in paths:
        try:
            images.append(load_rgb(p, size=size))
            ok.append(p)
        except ImageError as e:
            skipped.append((str(p), str(e).removeprefix(f"{p}: ")))
    return ok, images, skipped


def probe(path: Path | str) -> tuple[int, int, str]:
    """Width, height and PIL mode after a full decode (so truncation is caught)."""
    rgb, mode = _read(path, None)
    return rgb.shape[1], rgb.shape[0], mode


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB array to ``size`` x ``size`` (bilinear, antialiased)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    im = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def file_digest(path: Path | str) -> str:
    """SHA-1 of a file's bytes: the key of every content-addressed cache."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def readable_digest(path: Path | str) -> str | None:
    """``file_digest``, or None for a file that cannot be read (a link to nowhere or in a circle): batch
    work skips such a file with its reason when it decodes it."""
    try:
        return file_digest(path)
    except OSError:
        return None


class DecodeCache:
    """Resized uint8 images on disk, keyed by file content and size: decode each image once.

    Training reads every image many times; decoding a 450x450 BMP and resizing it costs more than
    a forward pass of a small CNN, so the resized array is stored as ``.npy`` and memory-mapped.
    """

    def __init__(self, root: Path, size: int):
        self.root = Path(root) / f"decoded-{size}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.size = size

    def get(self, path: Path | str) -> np.ndarray:
        key = self.root / f"{file_digest(path)}.npy"
        if key.exists():
            return np.load(key)
        arr = resize_square(load_rgb(path), self.size)
        with atomic_path(key) as tmp:
            np.save(tmp, arr)
        return arr
