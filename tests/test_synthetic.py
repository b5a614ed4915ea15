"""Synthetic cells: classes differ as described, subjects parse, per-subject stain, clearly marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.images import load_rgb
from leukoscope.data.manifest import classes, is_synthetic, protocol
from leukoscope.data.readers import read
from leukoscope.data.synthetic import SYNTHETIC_MARKER, class_names, make_synthetic

#: Nucleus pixels are dark in green (shade ~45); cytoplasm (~170) and background (~214) are not.
NUCLEUS_G = 110


def _nucleus(img: np.ndarray) -> np.ndarray:
    return img[..., 1] < NUCLEUS_G


def test_reader_sees_subjects_classes_and_the_marker(synthetic2: Path, data: Path) -> None:
    assert (synthetic2 / SYNTHETIC_MARKER).read_text().startswith("Synthetic")
    m = read([synthetic2])
    assert classes(m) == class_names(2) == ["blast", "normal"]
    assert sorted(m["subject"].unique(), key=lambda s: int(s[1:])) == [f"S{i}" for i in range(1, 9)]
    assert m.groupby("subject")["label"].nunique().eq(1).all()
    assert m["label"].value_counts().to_dict() == {"blast": 24, "normal": 24}
    assert protocol(m) == "subject-grouped" and is_synthetic(m)
    assert not is_synthetic(read([data / "cnmc_cells"]))  # real data is never flagged


def test_blasts_have_larger_smoother_nuclei_with_finer_texture(synthetic2: Path) -> None:
    m = read([synthetic2])
    area: dict[str, list[float]] = {"blast": [], "normal": []}
    grain: dict[str, list[float]] = {"blast": [], "normal": []}
    for path, label in zip(m["path"], m["label"], strict=True):
        img = load_rgb(path)
        assert img.shape == (64, 64, 3)
        nuc = _nucleus(img)
        area[label].append(nuc.mean())
        grain[label].append(img[..., 1][nuc].std())
    assert min(area["blast"]) > max(area["normal"])  # every blast nucleus is bigger
    assert np.mean(area["blast"]) > 1.8 * np.mean(area["normal"])
    assert np.mean(grain["blast"]) > 1.5 * np.mean(grain["normal"])  # fine, high-contrast chromatin


def test_four_classes_and_stain_varies_by_subject(synthetic4: Path) -> None:
    m = read([synthetic4])
    assert classes(m) == class_names(4) == ["blast", "mono", "myelo", "normal"]
    assert m.groupby("label")["subject"].nunique().to_dict() == dict.fromkeys(class_names(4), 3)
    cyto = {}
    for path, subject in zip(m["path"], m["subject"], strict=True):
        img = load_rgb(path).astype(float)
        cell = (img[..., 1] >= NUCLEUS_G) & (img[..., 1] < 200)
        cyto.setdefault(subject, []).append(img[cell].mean(axis=0))
    per_subject = np.array([np.mean(v, axis=0) for v in cyto.values()])
    within = np.mean([np.std(v, axis=0).mean() for v in cyto.values()])
    between = per_subject.std(axis=0).mean()
    assert between > 2 * within  # each subject has its own stain


def test_deterministic_and_validated(tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", n_subjects=2, per_subject=2, size=32, seed=5)
    b = make_synthetic(tmp_path / "b", n_subjects=2, per_subject=2, size=32, seed=5)
    c = make_synthetic(tmp_path / "c", n_subjects=2, per_subject=2, size=32, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 4
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    with pytest.raises(ValueError, match="n_classes must be 2..4"):
        make_synthetic(tmp_path / "d", n_classes=5)
