"""``train --outliers``: examples of cells a model must not call, for the ``exposure`` unfamiliarity score.

A model of normal cells never saw a blast, and its distance-based score cannot tell another lab's blasts
from that lab's normal cells (PBC model, DeepAPL: AUC 0.72). Shown blasts from any lab, a linear direction
in its embedding separates them much better (``models.unfamiliar.fit_exposure``). The outliers are a data
set leukoscope reads; with ``--outlier-class`` only that class of it is what to flag, and its other cells
are familiar kinds from the outliers' lab, which teach the score that a lab's stain is no reason to flag.

The outlier set gets its own train / val / test sides (whole groups, ``SIDES``): the regression learns on
train, its regularisation is chosen on val, and the bundle's metrics say how many held-out (test) outliers
it flags (``figures``). The run directory keeps the outliers and their sides (``outliers.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.data.manifest import Manifest
from leukoscope.errors import ConfigError

#: Shares of the outlier set's groups on each side.
SIDES = {"train": 0.6, "val": 0.2, "test": 0.2}
#: Fewest outlier cells: at least one on each side, and a few to learn from.
MIN_OUTLIERS = 10
OUTLIER, FAMILIAR = "outlier", "familiar"


#: The run directory's record of the outlier cells: path, label (outlier / familiar), side.
RECORD = "outliers.csv"


def read_outliers(path: str, cls: str | None, training: Manifest, seed: int, out: Path) -> Manifest:
    """The outlier set's cells, ``label`` ``outlier`` or ``familiar`` (cells of the other classes when ``cls``
    is given), with a ``side``, also written to ``out / RECORD``. Refused: a class the set does not have, too
    few outliers, and cells that are also training cells (a cell cannot be both)."""
    from leukoscope.io import write_csv_atomic

    where = f"--outliers {path}"
    if cls is None:
        m = _every_image(Path(path), where)
    else:
        m = _read(path, where)
        labels = sorted(set(m["label"].dropna().astype(str)))
        if cls not in labels:
            raise ConfigError(f"--outlier-class {cls!r} is not a class of {path} "
                              f"({', '.join(labels) or 'it has none'})")
        m = m[m["label"].notna()]
        m = m.assign(label=np.where(m["label"].astype(str) == cls, OUTLIER, FAMILIAR)).reset_index(drop=True)
    n = int((m["label"] == OUTLIER).sum())
    if n < MIN_OUTLIERS:
        raise ConfigError(f"{where}: {n} outlier cell(s); at least {MIN_OUTLIERS} are needed (they are split "
                          "into train / validation / test)")
    both = set(map(_resolved, m["path"])) & set(map(_resolved, training["path"]))
    if both:
        raise ConfigError(f"{where}: {len(both)} cell(s) are also training cells (e.g. {sorted(both)[0]}); "
                          "a cell cannot be both")
    m = _sided(m, seed)
    write_csv_atomic(Path(out) / RECORD, m[["path", "label", "side"]])
    return m


def _every_image(path: Path, where: str) -> Manifest:
    """Every image under the folder ``path`` as an outlier, whatever its layout (each image its own group);
    a file is read as a list of images (a CSV manifest)."""
    from leukoscope.data.images import iter_image_files
    from leukoscope.data.manifest import make_manifest

    if not path.is_dir():
        return _read(str(path), where).assign(label=OUTLIER)
    return make_manifest({"path": str(p), "label": OUTLIER} for p in iter_image_files(path.absolute()))


def _read(path: str, where: str) -> Manifest:
    """The data set at ``path`` read as every command reads data; its errors name ``--outliers``."""
    from leukoscope.data.readers import read
    from leukoscope.errors import DataError

    try:
        return read([path])
    except (DataError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def _sided(m: Manifest, seed: int) -> Manifest:
    """Whole groups of each role spread over ``SIDES`` in a seeded order."""
    rng = np.random.default_rng(seed)
    side = pd.Series("train", index=m.index)
    for _, part in m.groupby("label"):
        groups = rng.permutation(sorted(part["group"].unique()))
        cut = np.cumsum([round(len(groups) * SIDES[s]) for s in ("val", "test")])
        for name, chosen in (("val", groups[:cut[0]]), ("test", groups[cut[0]:cut[1]])):
            side[part.index[part["group"].isin(chosen)]] = name
    return m.assign(side=side.to_numpy())


def by_side(m: Manifest, emb: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Embeddings (rows of ``m``'s order) of the outliers and of the familiar cells, by side."""
    def part(label: str) -> dict[str, np.ndarray]:
        return {s: emb[((m["label"] == label) & (m["side"] == s)).to_numpy()] for s in SIDES}

    return part(OUTLIER), part(FAMILIAR)


def figures(scorer: Any, held: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
            source: tuple[str, str | None], m: Manifest) -> dict[str, Any]:
    """metrics.json's ``outliers``: where they came from (``source``: path, class), how many per side, and
    on the held-out sides (``held``: the test outliers' embeddings and logits, ``test``: the run's test
    cells') the share of outliers flagged, of the run's own test cells flagged, and the ROC AUC between
    the two."""
    from sklearn.metrics import roc_auc_score

    bad, good = scorer.score(*held), scorer.score(*test)
    both = np.r_[bad, good]
    out: dict[str, Any] = {
        "source": source[0], "class": source[1], "method": scorer.method, "C": scorer.exposure.get("C"),
        "cells": {role: {s: int(((m["label"] == role) & (m["side"] == s)).sum()) for s in SIDES}
                  for role in (OUTLIER, FAMILIAR)},
        "test_outliers_flagged": float(scorer.flag(bad).mean()) if len(bad) else None,
        "test_cells_flagged": float(scorer.flag(good).mean()) if len(good) else None}
    if len(bad) and len(good) and np.isfinite(both).all():
        out["test_auc"] = float(roc_auc_score(np.r_[np.ones(len(bad)), np.zeros(len(good))], both))
    return out
