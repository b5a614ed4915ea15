"""The unfamiliarity score of a new bundle (``models.unfamiliar``): fitted on the train side, its
threshold set on the validation side, written as ``unfamiliar.safetensors`` + config key ``unfamiliar``.

A run without a validation side gets no score (a threshold on training cells would flag almost
nothing: the nearest neighbour of a training cell is itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukoscope.bundle.format import UNFAMILIAR
from leukoscope.models.unfamiliar import MAX_REFERENCE, Scorer, fit_unfamiliar
from leukoscope.train.data import Prepared

if TYPE_CHECKING:
    from leukoscope.models.networks import Network


def network_scorer(model: Network, data: Prepared, pre: dict[str, Any], tta: bool, temperature: float,
                   seed: int = 0) -> Scorer | None:
    """The scorer of a trained network: its penultimate features (D4-averaged when ``tta``, as the
    bundle computes them) on at most ``MAX_REFERENCE`` training cells and on every validation cell."""
    import torch

    from leukoscope.models.networks import embed_features
    from leukoscope.train.forward import EVAL_BATCH, batches, inputs

    train, val = data.side("train"), data.side("val")
    if len(val) == 0 or len(train) == 0:
        return None
    if len(train) > MAX_REFERENCE:
        train = np.sort(np.random.default_rng(seed).choice(train, MAX_REFERENCE, replace=False))
    model.eval()

    def embed(idx: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([embed_features(model, inputs(data.images[idx[s]], pre), tta).float()
                                   .numpy() for s in batches(len(idx), EVAL_BATCH)])

    val_emb = embed(val)
    with torch.inference_mode():
        val_logits = model.head(torch.from_numpy(val_emb)).float().numpy()
    return fit_unfamiliar(embed(train), data.y[train], val_emb, val_logits, temperature, seed=seed)


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
