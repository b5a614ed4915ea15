"""Near-duplicate recall and precision of the data audit on real cells (issue #23.2).

    python benchmarks/neardup.py [--cells 200] [--n-jobs 2] [--out results/neardup.json]

Picks ``--cells`` distinct real cells across five data sets (``distinct_cells``), plants one copy
of each under every transform in ``TRANSFORMS`` (flips, rotations, re-encodings, crops resized
back, rescales), and audits the originals together with one transform's copies at a time.
Recall of a transform: the share of its copies the audit pairs with their own original. False
pairs: every other pair, i.e. two distinct cells (or a copy and another cell) called duplicates.
Prints a table and writes the figures, with the machine's load average, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

#: ALL-IDB2 cells the audit of the whole set pairs with another of its cells (the set is cut from
#: overlapping ALL-IDB1 fields, so some cells appear twice); they are left out of the distinct cells.
ALLIDB2_COPIES = frozenset({25, 28, 31, 134, 245, 135, 244, 138, 146, 170, 209, 171, 211, 222, 256,
                            223, 257, 224, 258, 225, 259, 227, 260})
#: C-NMC cells the audit pairs with another C-NMC cell of different pixels: the training folds hold
#: the same cells under two subject ids (H6 and H2, H10 and h3); the second of each is left out.
CNMC_COPIES = frozenset({"UID_H2_1_1_hem", "UID_H2_1_2_hem", "UID_h3_1_1_hem"})
_SHARES = {"aria_all": 0.25, "pbc": 0.25, "deepapl": 0.2, "allidb2": 0.15}  # C-NMC takes the rest


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))


def crop_resize(img: np.ndarray, rng: np.random.Generator, lo: float = 0.02, hi: float = 0.10) -> np.ndarray:
    """Cut ``lo``..``hi`` of the side from each edge (drawn per edge), then resize back to the
    original size: the same cell, a few percent larger in the frame."""
    h, w = img.shape[:2]
    t, b = (int(round(f * h)) for f in rng.uniform(lo, hi, 2))
    left, r = (int(round(f * w)) for f in rng.uniform(lo, hi, 2))
    return _resize(np.ascontiguousarray(img[t:h - b, left:w - r]), w, h)


def rescale(img: np.ndarray, factor: float) -> np.ndarray:
    """The whole image at ``factor`` times its size (the cell photographed at another scale)."""
    h, w = img.shape[:2]
    return _resize(img, int(round(w * factor)), int(round(h * factor)))


def _crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    t, left, b, r = rng.integers(int(0.02 * h), int(0.05 * h) + 1, 4)
    return img[t:h - b, left:w - r]


Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: How a copy is made: a transform of the pixels and the format it is saved in (JPEG at quality 85).
TRANSFORMS: dict[str, tuple[Transform, str]] = {
    "flip": (lambda img, _: img[:, ::-1], ".png"),
    "rot90": (lambda img, _: np.rot90(img), ".png"),
    "jpeg85": (lambda img, _: img, ".jpg"),
    "png": (lambda img, _: img, ".png"),
    "crop 2-5% (not resized)": (_crop, ".png"),
    "crop 2-10% + resize": (crop_resize, ".png"),
    "crop 10% + resize": (lambda img, rng: crop_resize(img, rng, 0.10, 0.10), ".png"),
    "rescale +10%": (lambda img, _: rescale(img, 1.1), ".png"),
    "rescale -10%": (lambda img, _: rescale(img, 0.9), ".png"),
    "crop 2-10% + resize, rot90, jpeg85": (lambda img, rng: np.rot90(crop_resize(img, rng)), ".jpg"),
}


def _spread(paths: list[Path], n: int) -> list[Path]:
    """``n`` of ``paths`` evenly spaced (all of them if fewer)."""
    if n >= len(paths):
        return paths
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n).round()]


def distinct_cells(data: Path, n: int = 200) -> list[Path]:
    """``n`` real cells known to be distinct, spread over five data sets.

    aria_all and PBC: evenly spaced over each set (samples of 3,256 and 17,092 cells). DeepAPL:
    one signed cell per patient (distinct patients, distinct cells). ALL-IDB2: evenly spaced,
    without its own near-copies (``ALLIDB2_COPIES``). C-NMC: the training sample and the extra
    cells, one of every file pair the full download lists as byte-identical
    (``cnmc_exact_duplicates.tsv``), one of each set of identical decoded pixels, and not the
    second of a known near pair (``CNMC_COPIES``).
    """
    import hashlib

    counts = {k: int(round(v * n)) for k, v in _SHARES.items()}
    cells = _spread(sorted((data / "aria_all").rglob("*.jpg")), counts["aria_all"])
    cells += _spread(sorted((data / "pbc").rglob("*.jpg")), counts["pbc"])
    patients = sorted((data / "deepapl/Data/All").iterdir())
    apl = [next(iter(sorted(p.rglob("Signed slides/*/*.jpg"))), None) for p in patients]
    cells += _spread([p for p in apl if p is not None], counts["deepapl"])
    cells += _spread([p for p in sorted((data / "allidb2").glob("Im*.tif"))
                      if int(p.name[2:5]) not in ALLIDB2_COPIES], counts["allidb2"])
    dup_rows = (data / "cnmc_exact_duplicates.tsv").read_text().splitlines()[1:]
    seconds = {Path(p.strip()).name for row in dup_rows for p in row.split("\t")[1].split("|")[1:]}
    cnmc, seen = [], set()
    for p in sorted((data / "cnmc_sample/C-NMC_Leukemia/training_data").rglob("*.bmp")) + sorted(
            (data / "cnmc_cells").rglob("*.png")):
        digest = hashlib.sha1(np.asarray(Image.open(p).convert("RGB")).tobytes()).hexdigest()
        if p.with_suffix(".bmp").name not in seconds and p.stem not in CNMC_COPIES and digest not in seen:
            seen.add(digest)
            cnmc.append(p)
    return cells + _spread(cnmc, n - len(cells))


def plant(sources: list[Path], name: str, out: Path, seed: int = 0) -> list[tuple[str, str]]:
    """One copy of every source under transform ``name``, written in ``out``; (source, copy) paths."""
    from leukoscope.data.images import load_rgb

    fn, suffix = TRANSFORMS[name]
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, src in enumerate(sources):
        dst = out / f"copy{i:03d}{suffix}"
        Image.fromarray(np.ascontiguousarray(fn(load_rgb(src), rng))).save(dst, quality=85)
        pairs.append((str(src.resolve()), str(dst.resolve())))
    return pairs


def measure(sources: list[Path], names: list[str], work: Path, n_jobs: int = 1,
            echo: bool = False) -> dict[str, dict]:
    """Per transform: the audit of the sources plus their copies; recall and the false pairs
    (each transform's line printed as it is done with ``echo``)."""
    import pandas as pd

    from leukoscope.audit import audit
    from leukoscope.data.readers import read_csv_manifest

    out: dict[str, dict] = {}
    for k, name in enumerate(names):
        pairs = plant(sources, name, work / f"t{k}", seed=k)
        rows = [dict(path=p, label="x", subject=None) for pair in zip(*pairs, strict=True) for p in pair]
        csv = work / f"t{k}.csv"
        pd.DataFrame(rows, columns=["path", "label", "subject"]).to_csv(csv, index=False)
        t0 = time.perf_counter()
        result = audit(read_csv_manifest(csv), n_jobs=n_jobs)
        wall = time.perf_counter() - t0
        paths = list(result.manifest["path"])
        found = {frozenset((paths[a], paths[b]))
                 for a, b in zip(result.pairs["a"], result.pairs["b"], strict=True)}
        expected = {frozenset(p) for p in pairs}
        false = sorted(sorted(Path(p).name for p in f) for f in found - expected)
        out[name] = {"copies": len(pairs), "found": len(found & expected),
                     "recall": len(found & expected) / len(pairs), "false_pairs": len(false),
                     "false_examples": false[:5], "audit_wall_s": round(wall, 2)}
        if echo:
            f = out[name]
            print(f"{name:36s} recall {f['found']:3d}/{f['copies']} = {f['recall']:.3f}   false pairs "
                  f"{f['false_pairs']} {f['false_examples'][:2]}   audit {wall:.1f} s", flush=True)
    return out


def main() -> None:
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="transform names (default: all)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "neardup.json")
    args = ap.parse_args()

    sources = distinct_cells(data_root(), args.cells)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{len(sources)} distinct real cells; load average before: {load_before:.2f}", flush=True)
        figures = measure(sources, args.only or list(TRANSFORMS), Path(tmp), args.n_jobs, echo=True)
    copies = sum(f["copies"] for f in figures.values())
    found = sum(f["found"] for f in figures.values())
    false = sum(f["false_pairs"] for f in figures.values())
    print(f"overall recall {found}/{copies} = {found / copies:.3f}; false pairs {false}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cells": len(sources), "load_avg_1min_before": round(load_before, 2),
                                    "overall_recall": round(found / copies, 4), "false_pairs": false,
                                    "transforms": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
