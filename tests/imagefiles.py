"""Hand-made image files for bad-input tests: raw PNGs of any bit depth, header-only giants,
truncated copies of real files, and a tiny C-NMC layout built from real sample images."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

CNMC_CSV = "C-NMC_test_prelim_phase_data_labels.csv"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(pixels: np.ndarray | None, *, width: int = 0, height: int = 0, bit_depth: int = 8,
              colour_type: int = 2) -> bytes:
    """A PNG written byte by byte; ``pixels=None`` gives a header-only file of the stated size.

    ``colour_type`` 0 = grey, 2 = RGB, 4 = grey+alpha, 6 = RGBA; 16-bit samples are big-endian.
    """
    if pixels is not None:
        height, width = pixels.shape[:2]
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    if pixels is not None:
        dtype = ">u2" if bit_depth == 16 else "u1"
        rows = pixels.astype(dtype).reshape(height, -1)
        raw = b"".join(b"\x00" + r.tobytes() for r in rows)
        out += _chunk(b"IDAT", zlib.compress(raw))
    return out + _chunk(b"IEND", b"")


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` fraction of a real image file's bytes."""
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


#: A few real training cells (fold, class, name), incl. the lower-case ``UID_h3`` of the real set.
CNMC_TRAIN = [("fold_0", "all", "UID_1_1_1_all.bmp"), ("fold_0", "hem", "UID_H6_1_1_hem.bmp"),
              ("fold_2", "hem", "UID_h3_1_1_hem.bmp")]


def cnmc_copy(data: Path, root: Path, extra_rows: tuple[str, ...] = (),
              extra_files: tuple[str, ...] = ()) -> Path:
    """A tiny C-NMC download under ``root`` made of real sample images: three training cells, the two
    numbered validation cells and the labels CSV, plus CSV rows naming missing files
    (``extra_rows``) and numbered validation files that have no row (``extra_files``)."""
    src = data / "cnmc_sample" / "C-NMC_Leukemia"
    dst = root / "C-NMC_Leukemia"
    for fold, cls, name in CNMC_TRAIN:
        (dst / "training_data" / fold / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "training_data" / fold / cls / name, dst / "training_data" / fold / cls / name)
    val = dst / "validation_data" / "C-NMC_test_prelim_phase_data"
    shutil.copytree(src / "validation_data" / "C-NMC_test_prelim_phase_data", val)
    for name in extra_files:
        shutil.copy(val / "1002.bmp", val / name)
    text = (src / "validation_data" / CNMC_CSV).read_bytes().decode()
    for i, name in enumerate(extra_rows):
        text += f"UID_H{90 + i}_1_1_hem.bmp,{name},0\r\n"
    (dst / "validation_data" / CNMC_CSV).write_bytes(text.encode())
    return root


def tiff_with_a_rational_strip_offset() -> bytes:
    """A small float TIFF whose StripOffsets tag says RATIONAL instead of LONG: Pillow raises TypeError
    while decoding it (as a fuzzed file did), not OSError."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50), np.float32)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, entry + 2, 5)  # type RATIONAL
    return bytes(data)
