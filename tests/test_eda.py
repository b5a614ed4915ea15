"""The EDA report: self-contained HTML + PNG figures, protocol stated, unreadable images counted."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from leukoscope.cli.verbs import app
from leukoscope.data.manifest import IMAGE_LEVEL_WARNING
from leukoscope.data.readers import read
from leukoscope.eda import GRID_PER_CLASS, eda_report
from leukoscope.errors import DataError

FIGURES = {"class_distribution.png", "images_per_subject.png", "sample_grid.png", "image_sizes.png",
           "mean_colour.png"}


def _assert_self_contained(html: str) -> None:
    sources = re.findall(r'src="([^"]*)"', html) + re.findall(r'href="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html


def _pngs(out: Path) -> set[str]:
    found = {p.name for p in out.glob("*.png")}
    for name in found:
        with Image.open(out / name) as im:
            im.verify()
    return found


def test_eda_on_subject_grouped_real_data(data: Path, tmp_path: Path) -> None:
    m = read([data / "cnmc_sample", data / "cnmc_cells"])
    report = eda_report(m, tmp_path / "eda")
    assert report == tmp_path / "eda" / "report.html"
    html = report.read_text(encoding="utf-8")
    _assert_self_contained(html)
    assert _pngs(tmp_path / "eda") == FIGURES
    assert '<span class="protocol">subject-grouped</span>' in html
    assert IMAGE_LEVEL_WARNING not in html
    assert "65 images" in html and "31 subjects" in html
    assert "<td>all (ALL blast)</td><td>34</td>" in html and "<td>hem (normal)</td><td>31</td>" in html
    assert "train 33, val 1" in html
    assert html.count('<figcaption>H') == GRID_PER_CLASS  # hem samples captioned by subject
    assert "None: every image decoded." in html


def test_eda_cli_image_level(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "allidb eda"
    r = CliRunner().invoke(app, ["data", "eda", str(data / "allidb2"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    html = (out / "report.html").read_text(encoding="utf-8")
    _assert_self_contained(html)
    assert _pngs(out) == FIGURES - {"images_per_subject.png"}
    assert '<span class="protocol">image-level</span>' in html and IMAGE_LEVEL_WARNING in html
    assert "no subject (patient) ids" in html
    assert "<td>all (ALL blast)</td><td>130</td>" in html and "<td>hem (normal)</td><td>130</td>" in html
    assert "<td>257x257</td><td>250</td>" in html  # ten border crops have other sizes
    assert html.count('<div class="grid">') == 2


def test_eda_shows_display_names_as_the_evaluation_report_does(data: Path, tmp_path: Path) -> None:
    """ALL subtype codes (Benign, Early, Pre, Pro) with their names in the class table, the sample headings
    and the figures, through the helper the evaluation report uses."""
    from leukoscope.data.classes import shown_classes

    m = read([data / "aria_all"])
    html = eda_report(m.groupby("label").head(3).reset_index(drop=True), tmp_path / "eda").read_text()
    shown = shown_classes(["Benign", "Early", "Pre", "Pro"])
    assert shown["Pro"] == "Pro (pro-B ALL)" and shown["Benign"] == "Benign (benign (hematogone))"
    for name in shown.values():
        assert f"<td>{name}</td><td>3</td>" in html and f"<h3>{name}</h3>" in html
        for figure in ("class_distribution", "sample_grid", "mean_colour"):
            assert name in (tmp_path / "eda" / f"{figure}.svg").read_text(), (figure, name)


def test_eda_four_classes(synthetic4: Path, tmp_path: Path) -> None:
    html = eda_report(read([synthetic4]), tmp_path / "eda").read_text(encoding="utf-8")
    for cls in ("blast", "mono", "myelo", "normal"):
        assert f"<td>{cls}</td><td>15</td>" in html
    assert html.count('<div class="grid">') == 4
    assert html.count("<figcaption>S") == 4 * GRID_PER_CLASS  # captioned by subject


def test_eda_skips_and_lists_unreadable(synthetic2: Path, tmp_path: Path) -> None:
    root = tmp_path / "cells [v2] ü"
    shutil.copytree(synthetic2, root)
    (root / "blast" / "UID_S1_90_1_blast.png").write_bytes(b"")
    (root / "normal" / "UID_S2_91_1_normal.png").write_text("not an image")
    r = CliRunner().invoke(app, ["data", "eda", str(root), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.stdout.split())
    assert "skipped 2 unreadable image(s):" in flat and "UID_S2_91_1_normal.png: not a readable image" in flat
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "2 image(s) could not be decoded and were skipped" in html
    assert "UID_S1_90_1_blast.png</td><td>empty file (0 bytes)" in html
    assert "UID_S2_91_1_normal.png</td><td>not a readable image" in html
    assert "50 images, 48 readable" in " ".join(html.split())
    assert "SYNTHETIC" in html  # generated data is named as such in every report


def test_eda_with_nothing_readable_is_a_clear_error(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        (tmp_path / "set" / cls / "x.png").write_text("no")
    with pytest.raises(DataError, match=r"none of the 2 images could be decoded \(e.g. .*x.png\)"):
        eda_report(read([tmp_path / "set"]), tmp_path / "out")
    r = CliRunner().invoke(app, ["data", "eda", str(tmp_path / "set"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and r.stderr.strip().startswith("error: none of the 2 images")


def test_eda_all_black_image_has_no_colour(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cells"
    for cls in ("all", "hem"):
        shutil.copytree(data / "cnmc_cells" / cls, root / cls)
    Image.new("RGB", (40, 40)).save(root / "all" / "UID_9_1_1_all.png")
    Image.new("RGB", (1, 1)).save(root / "hem" / "UID_H9_1_1_hem.png")
    r = CliRunner().invoke(app, ["data", "eda", str(root), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    html = " ".join((tmp_path / "out" / "report.html").read_text(encoding="utf-8").split())
    assert "13 images;" in html and "None: every image decoded." in html
    text = re.sub(r'"data:image/png;base64,[^"]*"', "", html)
    assert "nan" not in text.lower()  # a class's colour is the mean of its images that have one


def test_a_subject_with_cells_of_two_labels_shows_both(data: Path) -> None:
    """Images per subject are stacked by label (a mixed subject was drawn in its last row's colour only)."""
    from matplotlib.colors import to_hex

    from leukoscope.eda import _images_per_subject

    m = read([data / "cnmc_cells"]).iloc[:6].copy()
    m["subject"] = ["1", "1", "1", "1", "H6", "H6"]
    labels = ["all", "all", "all", "hem", "hem", "hem"]
    colours = {"all": "#aa0000", "hem": "#0000aa"}
    fig = _images_per_subject(m, labels, colours, {"all": "all", "hem": "hem"})
    ax = fig.axes[0]
    bars = [(round(b.get_x() + b.get_width() / 2), b.get_height(), to_hex(b.get_facecolor()))
            for b in ax.patches if b.get_height() > 0]
    assert sorted(bars) == [(0, 1.0, "#0000aa"), (0, 3.0, "#aa0000"), (1, 2.0, "#0000aa")]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["all", "hem"]
