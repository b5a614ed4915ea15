"""The rows and pixels a training run uses: the subset, the grouped split, the decoded image cache.

Both families take their rows the same way (``run_rows``: the labelled rows, rare classes merged or
dropped, the ``subset``; then the images that decode and ``run_split``), so a classical and a network
model trained on the same data with the same seed hold out the same test side: the split is made on
those rows before any image is decoded or featurised (an unreadable image leaves its side, it moves no
other row). By default the groups are merged over the audit's duplicate clusters first (``audit.groups``);
``--split FILE`` (``cfg.split``) gives the sides instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.data.images import load_rgb
from leukoscope.data.manifest import Manifest, classes, label_indices, labelled
from leukoscope.data.rare import RareReport, rare_classes
from leukoscope.data.splits import (
    Split,
    apply_split,
    check_no_leak,
    deduped,
    official_cnmc,
    read_split,
    side_sizes,
    split_protocol,
    split_warnings,
    train_val_test,
)
from leukoscope.errors import ConfigError, ImageError
from leukoscope.evaluate.operating import check_positive
from leukoscope.models import preprocess, stain
from leukoscope.progress import SILENT, Progress
from leukoscope.settings import threads
from leukoscope.train.config import TrainConfig


def subset(m: Manifest, fraction: float, seed: int) -> Manifest:
    """About ``fraction`` of the groups of each class (whole groups, so splits stay grouped)."""
    if fraction >= 1:
        return m
    rng = np.random.default_rng(seed)
    keep: set[str] = set()
    for _, part in m.groupby("label"):
        groups = sorted(part["group"].unique())
        n = max(2, math.ceil(fraction * len(groups)))
        keep.update(rng.choice(groups, size=min(n, len(groups)), replace=False))
    return m[m["group"].isin(keep)].reset_index(drop=True)


def run_rows(m: Manifest, cfg: TrainConfig) -> tuple[Manifest, RareReport]:
    """The rows a run learns and is scored on: labelled ones (an unlabelled cell is never scored), the
    classes under ``cfg.min_cells`` merged or dropped (``cfg.rare``), then ``cfg.subset`` of the groups.
    A ``cfg.positive`` that is not one of their classes is refused here, before any decoding."""
    rows, rare = rare_classes(labelled(m), cfg.min_cells, cfg.rare)
    if cfg.positive is not None:
        check_positive(cfg.positive, classes(rows))
    return subset(rows, cfg.subset, cfg.seed), rare


def protocol_split(m: Manifest, *, val: float, test: float, seed: int, dedupe: bool = True,
                   official: bool = False, split_file: str | Path | None = None, cache: Path | None = None,
                   progress: Progress = SILENT) -> Split:
    """The one split protocol of every command: ``m``'s rows with a grouped train / val / test
    ``side``, the groups merged over duplicate clusters unless ``dedupe`` is off; or the sides (or
    folds) of ``split_file``. The test side depends only on the rows, ``test`` and ``seed``.
    """
    from leukoscope.audit.groups import grouped

    if split_file is not None:
        return apply_split(m, read_split(Path(split_file), present=m["path"]))  # a moved copy finds its rows
    m = grouped(m, dedupe, cache=cache, progress=progress)
    if official:
        return official_cnmc(m, val=val, seed=seed)
    return train_val_test(m, val=val, test=test, seed=seed)


def run_split(m: Manifest, cfg: TrainConfig, kept: Manifest | None = None, progress: Progress = SILENT
              ) -> Split:
    """The run's split (``protocol_split``) of the rows ``m``, restricted to the ``kept`` ones (those
    that decode, in their order); checked for leaks."""
    kept = m if kept is None else kept
    split = protocol_split(m, val=cfg.val, test=cfg.test, seed=cfg.seed, dedupe=cfg.dedupe,
                           official=cfg.split_protocol == "official", split_file=cfg.split, progress=progress)
    if cfg.split is not None and "side" not in split:
        raise ConfigError(f"{cfg.split}: a k-fold split has no train / val / test sides; train needs one")
    split = split.set_index("path").reindex(kept["path"])
    take = split["side"].notna().to_numpy()
    out = kept[take].assign(**{c: split.loc[kept["path"][take], c].to_numpy()
                               for c in ("side", "group", "dedupe") if c in split}).reset_index(drop=True)
    check_no_leak(out)
    return out


def split_record(split: Split) -> dict[str, Any]:
    """What every output of a run says of its split: protocol, images per side, dedupe, caveats."""
    record = {"protocol": split_protocol(split), "sides": side_sizes(split), "dedupe": deduped(split)}
    warning = split_warnings(split)
    return record | ({"split_warning": warning} if warning else {})


def bundle_split(split: Split) -> Split:
    """The split as a bundle stores it (``split.csv``): without the reader's layout column."""
    return split.drop(columns=[c for c in ("layout",) if c in split])


def describe(m: Manifest) -> str:
    """The data sets a run used, as its bundle's ``data`` says."""
    return ", ".join(sorted(set(m.get("dataset", pd.Series(["input"])).astype(str))))


def decode(paths: Sequence[str], pre: dict[str, Any], progress: Progress
           ) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Each image decoded once, cropped and resized: N x S x S x 3 uint8 (skipped files listed)."""
    size = pre["input_size"]
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    skipped: list[tuple[str, str]] = []
    geometry = {**pre, "stain": {"method": "none"}, "grayscale": False}
    advance = progress.task("decoding images", len(paths))

    def one(i: int) -> None:
        try:
            out[i] = preprocess.to_uint8([load_rgb(paths[i])], geometry)[0]
        except ImageError as e:
            skipped.append((paths[i], str(e).removeprefix(f"{paths[i]}: ")))  # the reason, as elsewhere
        advance(1)

    with ThreadPoolExecutor(max_workers=threads()) as pool:
        list(pool.map(one, range(len(paths))))
    progress.done("decoding images")
    return out, skipped


@dataclass
class Decoded:
    """A network run's rows whose image decodes (``images[i]`` is ``rows.iloc[i]``), and how they were had."""

    rows: Manifest
    images: np.ndarray
    pre: dict[str, Any]
    classes: list[str]
    skipped: list[tuple[str, str]]
    rare: RareReport
    #: the run's rows before decoding: what the split is made on
    taken: Manifest


def decoded_rows(m: Manifest, cfg: TrainConfig, progress: Progress) -> Decoded:
    """The run's rows (``run_rows``) whose image decodes, their pixels, the preprocessing, the classes,
    the skipped images and the rare classes' report."""
    from leukoscope.models.networks import network_class

    taken, rare = run_rows(m, cfg)
    m = taken
    cls = network_class(cfg.model)
    pre = preprocess.preprocessing_config(cfg.img_size or 224, cls.mean, cls.std, cfg.grayscale,
                                          cfg.crop_to_cell)
    images, skipped = decode(list(m["path"]), pre, progress)
    if skipped:
        bad = {p for p, _ in skipped}
        keep = ~m["path"].isin(bad).to_numpy()
        m, images = m[keep].reset_index(drop=True), images[keep]
    return Decoded(m, images, pre, classes(m), skipped, rare, taken)


def styled(images: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """``decode``'s images with the run's stain normalisation and grey scale applied (the final cache)."""
    if pre["stain"]["method"] != "none" or pre["grayscale"]:
        return preprocess.to_uint8(list(images), {**pre, "crop_to_cell": False})
    return images


@dataclass
class Prepared:
    """A split with its pixels: ``images[i]`` belongs to ``split.iloc[i]``."""

    split: Split
    images: np.ndarray
    y: np.ndarray
    classes: list[str]

    def side(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split["side"].to_numpy() == name)


def prepare_split(split: Split, images: np.ndarray, pre: dict[str, Any], cfg: TrainConfig,
                  class_names: list[str]) -> tuple[Prepared, dict[str, Any]]:
    """Fit the stain target on the training side, apply stain + grayscale: the final uint8 cache."""
    train_idx = np.flatnonzero(split["side"].to_numpy() == "train")
    target = stain.fit([images[i] for i in train_idx[:64]], cfg.stain)
    pre = {**pre, "stain": target}
    images = styled(images, pre)
    y = np.asarray(label_indices(split, class_names), np.int64)
    return Prepared(split.reset_index(drop=True), images, y, class_names), pre
