"""Near-duplicates cropped and resized back, or rescaled, are found on real cells (issue #23.2); the
full measurement (200 cells) is benchmarks/neardup.py, this is its small version."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from leukoscope.audit import THRESHOLD  # noqa: E402
from leukoscope.audit.search import nearest  # noqa: E402
from leukoscope.audit.signatures import signature, verify  # noqa: E402
from leukoscope.data.images import load_rgb  # noqa: E402
from neardup import TRANSFORMS, crop_resize, distinct_cells, measure  # noqa: E402


def test_distinct_cells_span_five_sets_without_known_copies(data: Path) -> None:
    cells = distinct_cells(data, 40)
    assert len(cells) == len(set(cells)) == 40
    sets = {p.relative_to(data).parts[0] for p in cells}
    assert sets >= {"aria_all", "pbc", "deepapl", "allidb2"} and sets & {"cnmc_sample", "cnmc_cells"}
    assert not {"UID_H2_1_1_hem", "UID_h3_1_1_hem"} & {p.stem for p in cells}


def test_copies_cropped_resized_or_rescaled_are_found_and_distinct_cells_are_not(
        data: Path, tmp_path: Path) -> None:
    """40 distinct real cells, one copy each under each transform the audit used to miss (flips,
    rotations, re-encodings and small crops are in test_audit.py): recall >= 95 % for each
    transform, and no pair but a cell with its own copy."""
    new = [t for t in TRANSFORMS if "resize" in t or "rescale" in t]
    figures = measure(distinct_cells(data, 40), new, tmp_path)
    recall = {name: f["recall"] for name, f in figures.items()}
    assert min(recall.values()) >= 0.95, recall
    assert sum(f["false_pairs"] for f in figures.values()) == 0, {
        n: f["false_examples"] for n, f in figures.items() if f["false_pairs"]}


def test_zoomed_view_proposes_and_verifies_a_cropped_resized_copy(data: Path) -> None:
    """A 10 %-per-side crop resized back (a zoom of 1.25) is the nearest neighbour of its original
    under a zoomed DCT view, and verifying it at that view passes the audit's threshold, while
    the unzoomed view (all the audit tried before) scores far below it."""
    cells = sorted((data / "pbc" / "monocyte").glob("*.jpg"))
    img = load_rgb(cells[0])
    sigs = [signature(img), signature(crop_resize(img, np.random.default_rng(0), 0.10, 0.10))]
    sigs += [signature(load_rgb(p)) for p in cells[1:6]]
    x = np.stack([s.dct for s in sigs])
    x = x - x.mean(axis=(0, 1))
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    found = {frozenset((i, j)): (i, j, view) for i, j, _, view in nearest(x, 1, 0.4)}
    i, j, view = found[frozenset((0, 1))]
    assert view >= 8  # a zoomed view
    assert verify(sigs[j], sigs[i], view) >= THRESHOLD > 0.6 > verify(sigs[j], sigs[i], view % 8)


def _uneven_crop_resized(img: np.ndarray, top: float, side: float) -> np.ndarray:
    """Cut ``top`` of the height from the top and bottom edges and ``side`` of the width from the
    left and right, then resize back: the cell stretched more along one axis than the other."""
    h, w = img.shape[:2]
    t, s = int(round(top * h)), int(round(side * w))
    return np.asarray(Image.fromarray(np.ascontiguousarray(img[t:h - t, s:w - s])).resize(
        (w, h), Image.Resampling.BICUBIC))


@pytest.mark.parametrize("cell", ["cnmc_sample/C-NMC_Leukemia/training_data/fold_0/hem/UID_H11_1_1_hem.bmp",
                                  "pbc/lymphocyte/LY_772663.jpg"])
def test_uneven_crop_resized_back_is_verified(data: Path, cell: str) -> None:
    """Crops of 2 % from two opposite edges and 10 % from the other two, resized back, stretch the
    cell by 1.2 along one axis relative to the other (a C-NMC cell on black, whose box is refitted,
    and a PBC cell on its slide): the verification refines the aspect ratio and passes the audit's
    threshold under the view the nearest-neighbour search proposes (isotropic zooms alone scored
    both under it; the C-NMC cell's stretched box also misled the search to a rotated view)."""
    img = load_rgb(data / cell)
    others = sorted((data / cell).parent.glob(f"*{Path(cell).suffix}"))[:6]
    for top, side in ((0.02, 0.10), (0.10, 0.02)):
        sigs = [signature(img), signature(_uneven_crop_resized(img, top, side))]
        sigs += [signature(load_rgb(p)) for p in others if p.name != Path(cell).name][:5]
        x = np.stack([s.dct for s in sigs])
        x = x - x.mean(axis=(0, 1))
        x /= np.linalg.norm(x, axis=2, keepdims=True)
        found = {frozenset((i, j)): (i, j, view) for i, j, _, view in nearest(x, 1, 0.4)}
        i, j, view = found[frozenset((0, 1))]
        assert verify(sigs[j], sigs[i], view) >= THRESHOLD, (top, side)


def test_dct_of_each_view_is_derived_from_one_dct(data: Path) -> None:
    """The eight dihedral views' DCT signatures, derived from one DCT, equal the DCTs of the views."""
    from scipy.fft import dctn

    from leukoscope.audit.signatures import _dct_views
    from leukoscope.geometry import dihedral

    g = load_rgb(sorted((data / "pbc" / "monocyte").glob("*.jpg"))[0])
    a = g[:32, :32, 1].astype(np.float64)
    for derived, v in zip(_dct_views(dctn(a, norm="ortho")), dihedral(a), strict=True):
        assert np.allclose(derived, dctn(v, norm="ortho")[:8, :8])
