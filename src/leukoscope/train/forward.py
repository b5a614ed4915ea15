"""A network's eval-mode passes over cached uint8 images: logits (validation, held-out sides) and
embeddings (the frozen-feature baseline), in fixed-size batches with no augmentation, on the device
the module is on; the results come back as numpy (CPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.models.networks import Network, embed_features, forward_logits
from leukoscope.train import augment

EVAL_BATCH = 64


def batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters live (training moves the whole model to one device)."""
    return next(module.parameters()).device


def inputs(images: np.ndarray, pre: dict[str, Any]) -> torch.Tensor:
    """uint8 NHWC images as the network's normalised float input."""
    return augment.normalize(augment.to_float(torch.from_numpy(images)), pre["mean"], pre["std"])


def predict_logits(module: nn.Module, images: np.ndarray, pre: dict[str, Any], tta: bool = False,
                   advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Eval-mode logits of cached uint8 images (no augmentation; D4 average when ``tta``)."""
    module.eval()
    device, out = device_of(module), []
    with torch.inference_mode():
        for s in batches(len(images), EVAL_BATCH):
            out.append(forward_logits(module, inputs(images[s], pre).to(device), tta).float().cpu().numpy())
            if advance:
                advance(s.stop - s.start)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embeddings(module: Network, images: np.ndarray, pre: dict[str, Any], tta: bool = False) -> np.ndarray:
    """Eval-mode penultimate features of cached uint8 images, computed on the module's device (D4 average
    when ``tta``)."""
    module.eval()
    device = device_of(module)
    if len(images) == 0:
        return np.zeros((0, module.head.in_features), np.float32)
    with torch.inference_mode():
        return np.concatenate([embed_features(module, inputs(images[s], pre).to(device), tta)
                               .float().cpu().numpy() for s in batches(len(images), EVAL_BATCH)])
