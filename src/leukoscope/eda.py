"""Exploratory data report: what a data set holds before any model sees it.

``eda_report`` decodes every image once, keeps only small per-image statistics (size, mean colour,
a pixel sample for hue / saturation histograms) and thumbnails of a few samples per class, then
writes ``report.html`` (self-contained, figures embedded) and the same figures as PNGs.
Unreadable images are skipped, counted and listed, never fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope import __version__
from leukoscope.data.classes import shown_classes
from leukoscope.data.images import load_rgb
from leukoscope.data.manifest import Manifest, is_synthetic, protocol, warnings_for
from leukoscope.errors import DataError, ImageError
from leukoscope.evaluate.shortcut import for_eda
from leukoscope.geometry import foreground
from leukoscope.progress import SILENT, Progress
from leukoscope.reports.html import image_to_data_uri, save_figure, write_report

#: Samples shown per class in the grid, and the thumbnail side kept for them.
GRID_PER_CLASS = 8
THUMB = 96
#: Pixels per image kept for the hue / saturation histograms (a strided sample).
PIXEL_SAMPLE = 32
#: Pixels darker than this value (0-1) are background, e.g. C-NMC's black surround.
BACKGROUND_V = 0.08
HUE_BINS, SAT_BINS = 36, 32
UNLABELLED = "(unlabelled)"


@dataclass
class _Stats:
    """What the single decoding pass keeps: per-image numbers, pixel samples, grid thumbnails."""

    images: list[dict[str, Any]] = field(default_factory=list)
    #: Per class, pixel counts in HUE_BINS hue bins and SAT_BINS saturation bins (constant memory).
    hue: dict[str, np.ndarray] = field(default_factory=dict)
    sat: dict[str, np.ndarray] = field(default_factory=dict)
    thumbs: dict[int, np.ndarray] = field(default_factory=dict)
    unreadable: list[dict[str, str]] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.images, columns=["row", "label", "width", "height", "r", "g", "b"])


def _labels(m: Manifest) -> list[str]:
    return [lab or UNLABELLED for lab in m["label"]]


def _grid_rows(labels: list[str], per_class: int) -> set[int]:
    """Evenly spaced row indices per class, so the grid spans the whole class, not its first files."""
    chosen: set[int] = set()
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    for idx in by_class.values():
        take = np.linspace(0, len(idx) - 1, min(per_class, len(idx))).round().astype(int)
        chosen.update(idx[t] for t in take)
    return chosen


def _cell_pixels(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB (0-255) and HSV (0-1) of a strided pixel sample, background pixels removed.

    An image that is all background (all black) has no cell pixels: both arrays are empty, as
    ``rgb_to_hsv`` refuses an empty array.
    """
    from matplotlib.colors import rgb_to_hsv

    step = max(1, min(img.shape[:2]) // PIXEL_SAMPLE)
    rgb = img[::step, ::step].reshape(-1, 3)
    rgb = rgb[foreground(rgb, BACKGROUND_V * 255)]
    return rgb, rgb_to_hsv(rgb / 255.0) if len(rgb) else np.empty((0, 3))


def _gather(m: Manifest, labels: list[str], on_skip: Callable[[str, str], None] | None,
            progress: Progress) -> _Stats:
    from PIL import Image

    st = _Stats()
    grid = _grid_rows(labels, GRID_PER_CLASS)
    advance = progress.task("decoding", len(m))
    for i, p in enumerate(m["path"]):
        try:
            img = load_rgb(p)
        except ImageError as e:
            reason = str(e).removeprefix(f"{p}: ")
            st.unreadable.append({"path": p, "reason": reason})
            if on_skip:
                on_skip(p, reason)
        else:
            rgb, hsv = _cell_pixels(img)
            r, g, b = rgb.mean(axis=0) if len(rgb) else (np.nan,) * 3  # no cell pixels: no colour
            st.images.append(dict(row=i, label=labels[i], width=img.shape[1], height=img.shape[0],
                                  r=r, g=g, b=b))
            st.hue[labels[i]] = st.hue.get(labels[i], 0) + np.histogram(hsv[:, 0], HUE_BINS, (0, 1))[0]
            st.sat[labels[i]] = st.sat.get(labels[i], 0) + np.histogram(hsv[:, 1], SAT_BINS, (0, 1))[0]
            if i in grid:
                im = Image.fromarray(img)
                im.thumbnail((THUMB, THUMB))
                st.thumbs[i] = np.asarray(im)
        advance(1)
    progress.done("decoding")
    return st


def _colours(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _class_distribution(m: Manifest, labels: list[str], shown: dict[str, str]) -> Any:
    from matplotlib.figure import Figure

    names = list(shown)
    splits = sorted(set(m["source_split"]))
    fig = Figure(figsize=(max(4.5, 1.1 * len(names) + 2), 3.4))
    ax = fig.subplots()
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for s in splits:
        counts = Counter(lab for lab, sp in zip(labels, m["source_split"], strict=True) if sp == s)
        h = np.array([counts.get(n, 0) for n in names])
        ax.bar(x, h, bottom=bottom, label=s)
        bottom += h
    for xi, total in enumerate(bottom):
        ax.text(xi, total, str(int(total)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, list(shown.values()), rotation=20 if len(names) > 4 else 0)
    ax.set_ylabel("images")
    ax.set_title("Images per class")
    if len(splits) > 1:
        ax.legend(title="source split", fontsize=8)
    return fig


def _images_per_subject(m: Manifest, labels: list[str], colours: dict[str, Any], shown: dict[str, str]
                        ) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    """A bar per subject, stacked by label: a subject with cells of two labels shows both."""
    rows = [(s, lab) for s, lab in zip(m["subject"], labels, strict=True) if s is not None]
    counts = Counter(s for s, _ in rows)
    per = Counter(rows)  # (subject, label) -> images
    main = {s: max(sorted({lab for t, lab in per if t == s}), key=lambda lab: per[s, lab]) for s in counts}
    order = sorted(counts, key=lambda s: (-counts[s], main[s], len(s), s))
    fig = Figure(figsize=(min(14, max(5, 0.28 * len(order) + 2)), 3.4))
    ax = fig.subplots()
    present = sorted({lab for _, lab in per})
    bottom = np.zeros(len(order))
    for lab in present:
        heights = np.array([per[s, lab] for s in order], float)
        ax.bar(range(len(order)), heights, bottom=bottom, color=colours[lab])
        bottom += heights
    if len(order) <= 60:
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    ax.legend(handles=[Patch(color=colours[lab], label=shown[lab]) for lab in present], fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("images")
    ax.set_title(f"Images per subject ({len(order)} subjects)")
    return fig


def _sample_grid(st: _Stats, labels: list[str], shown: dict[str, str]) -> Any:
    """One mosaic image (a row per class) drawn with a single imshow: fast, and sharp."""
    from matplotlib.figure import Figure

    names = list(shown)
    per = {n: [i for i in sorted(st.thumbs) if labels[i] == n] for n in names}
    cols = max(1, max(len(v) for v in per.values()))
    pad = 4
    tile = THUMB + pad
    mosaic = np.full((len(names) * tile, cols * tile, 3), 255, np.uint8)
    for r, n in enumerate(names):
        for c, i in enumerate(per[n]):
            th = st.thumbs[i]
            y, x = r * tile + (THUMB - th.shape[0]) // 2, c * tile + (THUMB - th.shape[1]) // 2
            mosaic[y:y + th.shape[0], x:x + th.shape[1]] = th
    fig = Figure(figsize=(cols * tile / 80 + 1.5, len(names) * tile / 80 + 0.5))
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * tile + THUMB / 2 for r in range(len(names))], list(shown.values()))
    ax.tick_params(left=False)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("Samples per class")
    return fig


def _image_sizes(sizes: Counter[str]) -> Any:
    from matplotlib.figure import Figure

    top = sizes.most_common(15)
    fig = Figure(figsize=(5.5, 0.3 * len(top) + 1.4))
    ax = fig.subplots()
    ax.barh([s for s, _ in top][::-1], [n for _, n in top][::-1], color="#5577aa")
    ax.set_xlabel("images")
    ax.set_title("Image sizes (width x height)" + (", 15 most common" if len(sizes) > 15 else ""))
    return fig


def _mean_colour(t: pd.DataFrame, st: _Stats, shown: dict[str, str], colours: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for n, name in shown.items():
        part = t[t["label"] == n]
        if part.empty:
            continue
        ax1.scatter(part["r"], part["b"], s=8, alpha=0.6, color=colours[n], label=name)
        for ax, counts in ((ax2, st.hue[n]), (ax3, st.sat[n])):
            ax.stairs(counts / max(1, counts.sum()) * len(counts), np.linspace(0, 1, len(counts) + 1),
                      color=colours[n])
    ax1.set(xlabel="mean red", ylabel="mean blue", title="Mean colour per image (cell pixels)")
    ax1.legend(fontsize=7, markerscale=2)
    ax2.set(xlabel="hue", ylabel="density", title="Hue of cell pixels")
    ax3.set(xlabel="saturation", title="Saturation of cell pixels")
    return fig


def _summary(m: Manifest, labels: list[str], shown: dict[str, str], t: pd.DataFrame) -> list[dict[str, Any]]:
    """One table row per class: images per source split, subjects, mean size and mean colour."""
    out = []
    lab = np.array(labels)
    for n in shown:
        sel = lab == n
        part = t[t["label"] == n]
        row: dict[str, Any] = {
            "label": n,
            "shown": shown[n],
            "images": int(sel.sum()),
            "by_split": dict(sorted(Counter(m.loc[sel, "source_split"]).items())),
            "subjects": int(m.loc[sel, "subject"].dropna().nunique()),
            "size": "-", "rgb": ["-"] * 3, "colour": "#ffffff",
        }
        if len(part):
            row.update(size=f"{part['width'].mean():.0f} x {part['height'].mean():.0f}")
        coloured = part[["r", "g", "b"]].dropna()  # images with no cell pixels have no colour
        if len(coloured):
            rgb = coloured.mean().to_numpy()
            row.update(rgb=[f"{v:.0f}" for v in rgb],
                       colour="#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb)))
        out.append(row)
    return out


def eda_report(m: Manifest, out: Path, on_skip: Callable[[str, str], None] | None = None, *,
               progress: Progress = SILENT) -> Path:
    """Write ``out/report.html`` and its PNG figures for manifest ``m``; returns the report path.

    ``on_skip(path, reason)`` is called once per unreadable image (they are also listed in the
    report); ``progress`` counts the images as they are decoded.
    """
    if len(m) == 0:
        raise DataError("the data set has no images to report on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(m)
    names = sorted(set(labels))
    shown = shown_classes(names)  # codes as reports show them: hem (normal)
    colours = _colours(names)
    st = _gather(m, labels, on_skip, progress)
    t = st.table()
    if t.empty:
        raise DataError(f"none of the {len(m)} images could be decoded (e.g. {st.unreadable[0]['path']})")
    sizes = Counter(f"{w}x{h}" for w, h in zip(t["width"], t["height"], strict=True))

    figures = [("class_distribution", "Class distribution", _class_distribution(m, labels, shown))]
    has_subject = bool(m["subject"].notna().any())
    if has_subject:
        figures.append(("images_per_subject", "Images per subject",
                        _images_per_subject(m, labels, colours, shown)))
    figures += [
        ("sample_grid", "Sample grid", _sample_grid(st, labels, shown)),
        ("image_sizes", "Image sizes", _image_sizes(sizes)),
        ("mean_colour", "Mean colour", _mean_colour(t, st, shown, colours)),
    ]
    embedded = [{"title": title, "file": f"{key}.png", "uri": save_figure(fig, out / f"{key}.png")}
                for key, title, fig in figures]
    # The HTML shows the samples as captioned thumbnails instead of the grid PNG.
    embedded = [f for f in embedded if f["file"] != "sample_grid.png"]
    samples = {shown[n]: [{"uri": image_to_data_uri(st.thumbs[i], THUMB),
                           "name": Path(m["path"].iloc[i]).name, "subject": m["subject"].iloc[i]}
                          for i in sorted(st.thumbs) if labels[i] == n] for n in names}
    return write_report(
        out / "report.html", "eda.html",
        title="Exploratory data report" + (" (SYNTHETIC data)" if is_synthetic(m) else ""),
        version=__version__,
        protocol=protocol(m),
        warning=warnings_for(m),
        datasets=sorted(set(m.get("dataset", []))),
        layouts=sorted(set(m.get("layout", []))),
        n_images=len(m),
        n_read=len(t),
        n_subjects=int(m["subject"].dropna().nunique()),
        has_subject=has_subject,
        summary=_summary(m, labels, shown, t),
        sizes=sizes.most_common(10),
        n_sizes=len(sizes),
        figures=embedded,
        samples=samples,
        unreadable=st.unreadable,
        shortcut=for_eda(m[~m["path"].isin([u["path"] for u in st.unreadable])]),
        background_v=BACKGROUND_V,
    )
