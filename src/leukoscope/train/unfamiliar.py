"""The unfamiliarity score of a new bundle (``models.unfamiliar``): fitted on the train side, its
threshold set on the validation side, written as ``unfamiliar.safetensors`` + config key ``unfamiliar``.

A run without a validation side gets no score (a threshold on training cells would flag almost
nothing: the nearest neighbour of a training cell is itself). With ``--outliers`` the score is
``exposure`` (``train.outliers``), and both families pass their outliers' embeddings to ``exposure``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukoscope.bundle.format import UNFAMILIAR
from leukoscope.data.manifest import Manifest, skipped_files
from leukoscope.models.unfamiliar import MAX_REFERENCE, Scorer, fit_exposure, fit_unfamiliar
from leukoscope.progress import SILENT, Progress
from leukoscope.train.config import TrainConfig
from leukoscope.train.data import Prepared, decode, styled
from leukoscope.train.outliers import FAMILIAR, OUTLIER, by_side, figures, usable

if TYPE_CHECKING:
    from leukoscope.models.networks import Network


def network_embeddings(model: Network, data: Prepared, pre: dict[str, Any], tta: bool, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A trained network's penultimate features (D4-averaged when ``tta``, as the bundle computes them):
    (the training cells embedded: at most ``MAX_REFERENCE`` of them, their embeddings, the validation
    cells' embeddings)."""
    from leukoscope.train.forward import embeddings

    train, val = data.side("train"), data.side("val")
    if len(train) > MAX_REFERENCE:
        train = np.sort(np.random.default_rng(seed).choice(train, MAX_REFERENCE, replace=False))
    return (train, embeddings(model, data.images[train], pre, tta),
            embeddings(model, data.images[val], pre, tta))


def head_logits(model: Network, emb: np.ndarray) -> np.ndarray:
    """The head's logits of embeddings, on whichever device the model was trained on."""
    import torch

    from leukoscope.train.forward import device_of

    with torch.inference_mode():
        return model.head(torch.from_numpy(emb).to(device_of(model))).float().cpu().numpy()


def network_scorer(model: Network, train_emb: np.ndarray, train_y: np.ndarray, val_emb: np.ndarray,
                   temperature: float, seed: int = 0) -> Scorer | None:
    """The scorer of a trained network, on ``network_embeddings``."""
    if len(val_emb) == 0 or len(train_emb) == 0:
        return None
    return fit_unfamiliar(train_emb, train_y, val_emb, head_logits(model, val_emb), temperature, seed=seed)


def decoded_outliers(outliers: Manifest, pre: dict[str, Any], cfg: TrainConfig, progress: Progress = SILENT
                     ) -> tuple[tuple[Manifest, np.ndarray], list[tuple[str, str]]]:
    """The outlier cells that decode and their pixels, preprocessed as the training cells were (checked
    again: ``train.outliers.usable``), before the network trains; the files skipped (the reader's too)."""
    images, skipped = decode(list(outliers["path"]), pre, progress)
    keep = ~outliers["path"].isin({p for p, _ in skipped}).to_numpy()
    cells = usable(outliers, keep, f"--outliers {cfg.outliers}", cfg.outlier_class)
    return (cells, styled(images[keep], pre)), skipped_files(outliers) + skipped


def exposure(train_emb: np.ndarray, train_y: np.ndarray, val: tuple[np.ndarray, np.ndarray],
             test: tuple[np.ndarray, np.ndarray], temperature: float, outliers: Manifest,
             embedded: tuple[np.ndarray, np.ndarray], source: tuple[str, str | None], *,
             standardise: bool = False) -> tuple[Scorer, dict[str, Any]]:
    """The ``exposure`` scorer of a run with ``--outliers``, and metrics.json's ``outliers`` figures.

    ``val`` and ``test`` are the run's (embeddings, logits) of those sides, ``embedded`` the outliers'
    (rows of ``outliers``), ``source`` the ``--outliers`` path and ``--outlier-class``."""
    bad, good = by_side(outliers, embedded[0])
    scorer = fit_exposure(train_emb, train_y, val[0], val[1], temperature, bad, good, standardise=standardise)
    held = (outliers["side"] == "test").to_numpy()
    bad = held & (outliers["label"] == OUTLIER).to_numpy()
    others = held & (outliers["label"] == FAMILIAR).to_numpy()
    return scorer, figures(scorer, (embedded[0][bad], embedded[1][bad]),
                           (embedded[0][others], embedded[1][others]), test, source, outliers)


def mean_logits(model: Network, train_emb: np.ndarray) -> dict[str, Any]:
    """The config.json entry ``mean_logits``: the training cells' mean logits, which ``--adapt`` moves a new
    lab's onto (``Bundle.adapted``); the head is linear, so that is the logits of their mean embedding."""
    if len(train_emb) == 0:
        return {}
    mean = head_logits(model, train_emb.mean(axis=0, keepdims=True))[0]
    return {"mean_logits": [float(v) for v in mean]}


def classical_scorer(X: np.ndarray, y: np.ndarray, sides: np.ndarray, val_logits: np.ndarray | None,
                     temperature: float, seed: int = 0) -> Scorer | None:
    """The scorer of a classical pipeline: its feature rows, standardised with the training mean / std."""
    train, val = sides == "train", sides == "val"
    if val_logits is None or not val.any() or not train.any():
        return None
    return fit_unfamiliar(X[train], y[train], X[val], val_logits, temperature, standardise=True, seed=seed)


def unfamiliar_config(scorer: Scorer | None) -> dict[str, Any]:
    """The config.json entry of ``scorer`` (nothing without one)."""
    return {} if scorer is None else {"unfamiliar": scorer.config()}


def save_scorer(folder: Path, scorer: Scorer | None) -> None:
    """Write the scorer's tensors into the bundle being written (msp / energy have none)."""
    if scorer is not None and scorer.tensors:
        scorer.save(Path(folder) / UNFAMILIAR)
