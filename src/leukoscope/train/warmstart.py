"""The head's warm start for pretrained networks, and the baseline it gives for free: logistic
regression on the frozen embeddings, scored on val / test (what fine-tuning has to beat)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.models.networks import Network
from leukoscope.progress import Progress
from leukoscope.train.config import TrainConfig
from leukoscope.train.data import Prepared
from leukoscope.train.forward import device_of, embeddings
from leukoscope.train.heldout import scores


def warm_start(model: Network, data: Prepared, pre: dict[str, Any], cfg: TrainConfig,
               loss_weights: np.ndarray, progress: Progress) -> dict[str, Any]:
    """Embed every image once, score the frozen baseline, fit the head; the baseline's figures."""
    what = "frozen features: logistic regression, head warm-up"
    advance = progress.task(what, 1)
    tr = data.side("train")
    emb = embeddings(model, data.images, pre)
    figures = frozen_linear(emb, data, cfg.seed)
    warm_head(model, emb[tr], data.y[tr], loss_weights, cfg)
    advance(1)
    progress.done(what)
    return figures


def frozen_linear(emb: np.ndarray, data: Prepared, seed: int) -> dict[str, Any]:
    """Logistic regression on frozen embeddings, scored on val / test: the baseline to beat."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr = data.side("train")
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500, class_weight="balanced",
                                                            random_state=seed))
    lr.fit(emb[tr], data.y[tr])
    figures = {}
    for side in ("val", "test"):
        idx = data.side(side)
        if len(idx):
            figures[side] = scores(data.y[idx], lr.predict_proba(emb[idx]), data.classes)
    return figures


def warm_head(model: Network, emb: np.ndarray, y: np.ndarray, weights: np.ndarray,
              cfg: TrainConfig, steps: int = 300) -> None:
    """Train only the linear head on frozen embeddings (full batch, seconds), so fine-tuning
    starts from a sensible head instead of a random one that would scramble the body."""
    head = model.head
    device = device_of(head)
    x, t = torch.from_numpy(emb).to(device), torch.from_numpy(y).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32),
                                  label_smoothing=cfg.label_smoothing).to(device)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(head(x), t).backward()
        opt.step()
