"""Unfamiliar cells in predictions: the probabilities and the bundle's unfamiliarity score in one pass,
and the CSV columns ``unfamiliarity`` (higher = less like the training data) and ``unfamiliar`` (the
flag: score above the bundle's threshold), whose ``label`` then reads ``unfamiliar`` instead of a class.

A bundle written before scores existed has no scorer: its CSV has neither column (omitted, not left
empty, so the file reads exactly as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from leukoscope.bundle import Bundle
from leukoscope.predict.tta import predict_proba, view_logits
from leukoscope.probability import decide

COLUMNS = ["unfamiliarity", "unfamiliar"]
#: What ``label`` (CSV, API, page) says of a flagged cell instead of a class.
UNFAMILIAR = "unfamiliar"


def columns(bundle: Bundle) -> list[str]:
    """The extra CSV columns of ``bundle``'s predictions (none without a scorer)."""
    return COLUMNS if bundle.unfamiliar is not None else []


def assess(bundle: Bundle, images: Sequence[np.ndarray], tta: bool = False
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities (D4 mean with ``tta``) and unfamiliarity (of the image as given;
    None without a scorer)."""
    probs, scores = bundle.assess(images)
    if tta and len(images):
        probs = predict_proba(bundle, images, tta)
    return probs, scores


def scored_views(bundle: Bundle, images: Sequence[np.ndarray], tta: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """``tta.view_logits`` and the unfamiliarity of each image as given (None without a scorer)."""
    if bundle.unfamiliar is None:
        return view_logits(bundle, images, tta), None
    logits, scores = bundle.scored_logits(images)
    return (view_logits(bundle, images, tta) if tta else logits[:, None, :]), scores


def label(classes: Sequence[str], probs: np.ndarray, flagged: bool,
          operating_point: dict[str, Any] | None = None) -> str:
    """The call: ``unfamiliar`` for a flagged cell, else ``probability.decide``'s class (the bundle's
    operating point, or the most probable class)."""
    return UNFAMILIAR if flagged else classes[int(decide(probs, classes, operating_point)[0])]


def marks(bundle: Bundle, scores: np.ndarray | None, n: int) -> list[tuple[float, bool] | None]:
    """(score, flagged) per row, or None per row without a scorer."""
    if bundle.unfamiliar is None or scores is None:
        return [None] * n
    return [(float(s), bool(f)) for s, f in zip(scores, bundle.unfamiliar.flag(scores), strict=True)]
