"""``--adapt``: a bundle fitted to a new lab's cells, from those cells alone, before they are scored.

A model trained in one lab meets another lab's stain, camera and patients; the cells to be scored are
themselves the evidence of how that lab differs. ``adapt_to`` reads them all (the scoring pass that
follows reads them again: predict writes its first row only once the model is adapted) and hands them to
``Bundle.adapted`` (classical bundles: features standardised with the new cells' statistics, class
frequencies re-estimated; networks: their mean logits moved onto the training cells'). It is transductive:
each cell's call then depends on the cells it came with, so the same cell can be called differently in
another batch. Unreadable files are left out here; the scoring pass that follows reports them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from leukoscope.batches import chunks
from leukoscope.bundle import Bundle
from leukoscope.data.images import load_batch
from leukoscope.predict.local import decode_size
from leukoscope.progress import SILENT, Progress


def adapt_to(bundle: Bundle, paths: Sequence[str], batch_size: int = 64, progress: Progress = SILENT
             ) -> Bundle:
    """``bundle.adapted`` on the readable images of ``paths``, decoded ``batch_size`` at a time."""
    size = decode_size(bundle.config)

    def batches() -> Iterator[list[np.ndarray]]:
        advance = progress.task("adapting", len(paths))
        for chunk in chunks(list(paths), batch_size):
            _, images, _ = load_batch(chunk, size=size)
            advance(len(chunk))
            yield images
        progress.done("adapting")

    return bundle.adapted(batches())


def adaptation_line(info: dict[str, Any]) -> str:
    """What ``Bundle.adaptation`` did, in one line: the cells, how, and (classical) each class's frequency
    as trained and as estimated among them."""
    line = f"adapted to these {info['cells']} cells ({info['how']})"
    if "estimated_frequencies" not in info:
        return line
    trained, estimated = info["training_frequencies"], info["estimated_frequencies"]
    return line + "; class frequencies, trained -> estimated: " + ", ".join(
        f"{c} {trained[c]:.0%} -> {estimated[c]:.0%}" for c in trained)
