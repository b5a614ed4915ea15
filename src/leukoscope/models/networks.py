"""Network models (``family="network"``): the registered ``nn.Module`` classes (their bundle family
is ``leukoscope.bundle.network``).

Every network is an ``nn.Module`` subclass of ``Network`` registered with ``@register_model`` (the
class is the builder: ``get_model(name).build(num_classes=..., pretrained=...)``). The shared
interface the training loop, Grad-CAM and ONNX export rely on:

- ``forward(x)``: float32 NCHW (``models.preprocess.prepare``) -> logits;
- ``embed(x)``: pooled features before the classifier; ``head``: the final ``nn.Linear``;
- ``last_conv``: dotted name of the last convolution (``module.get_submodule(last_conv)``);
- ``stages()``: blocks from input to output, so fine-tuning can unfreeze the top ``depth`` of them;
- class attributes ``mean`` / ``std`` (input normalisation) and ``train_defaults`` (TrainConfig
  fields this model trains best with).

A model's ``space(trial)`` returns TrainConfig fields (lr, batch size, epochs, augmentation
strength, input size, fine-tuning depth), since those are what is tuned for a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
from torch import nn

from leukoscope.errors import BundleError
from leukoscope.geometry import dihedral
from leukoscope.models import backbones
from leukoscope.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from leukoscope.models.registry import get_model, register_model


class Network(nn.Module):
    """Base of the registered networks (see the module docstring for the interface)."""

    last_conv: ClassVar[str] = ""
    mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, ...]] = IMAGENET_STD
    pretrained: ClassVar[bool] = False
    train_defaults: ClassVar[dict[str, Any]] = {}
    head: nn.Linear
    dropout: nn.Module

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))

    def trainable(self, depth: int | None) -> list[nn.Parameter]:
        """Freeze all but the head and the top ``depth`` stages (None or negative: train everything)."""
        stages = self.stages()
        if depth is None or depth < 0 or depth >= len(stages):
            keep: list[nn.Module] = [self]
        else:
            keep = [self.head, *stages[len(stages) - depth:]]
        self.requires_grad_(False)
        for m in keep:
            m.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def frozen_modules(self) -> list[nn.Module]:
        """Stages with no trainable parameter: kept in eval mode so their BatchNorm stats stay put."""
        return [s for s in self.stages() if not any(p.requires_grad for p in s.parameters())]


def _space(trial: Any, sizes: Sequence[int], depths: Sequence[int]) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
            "epochs": trial.suggest_int("epochs", 4, 20),
            "aug_strength": trial.suggest_float("aug_strength", 0.0, 1.5),
            "img_size": trial.suggest_categorical("img_size", list(sizes)),
            "finetune_depth": trial.suggest_categorical("finetune_depth", list(depths))}


def _leukonet_space(trial: Any) -> dict[str, Any]:
    return _space(trial, (64, 96, 128), (-1,))


def _lite0_space(trial: Any) -> dict[str, Any]:
    return _space(trial, (128, 160, 192, 224), (-1, 2, 4, 8))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Conv 3x3 - BatchNorm - ReLU - max-pool, the Keras seed projects' block (with BatchNorm)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


@register_model("leukonet", family="network", space=_leukonet_space)
class LeukoNet(Network):
    """Small CNN trained from scratch: three conv blocks (32-64-128), global pooling, dropout."""

    last_conv = "features.2.0"
    train_defaults = {"img_size": 64, "lr": 2e-3, "epochs": 30, "batch_size": 16, "patience": 10}

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.3, pretrained: bool = False):
        super().__init__()
        w = [width, 2 * width, 4 * width]
        self.features = nn.Sequential(_conv_block(3, w[0]), _conv_block(w[0], w[1]), _conv_block(w[1], w[2]))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(w[2], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def stages(self) -> list[nn.Module]:
        return list(self.features)


@register_model("efficientnet_lite0", family="network", space=_lite0_space)
class Lite0(Network):
    """EfficientNet-Lite0, ImageNet-pretrained (offline weights), fine-tuned: head first, then the body."""

    last_conv = "net._conv_head"
    mean, std = backbones.LITE0_MEAN, backbones.LITE0_STD
    pretrained = True
    # BatchNorm frozen: batch statistics of cell crops are far from ImageNet's, and in train mode
    # they alone took a warmed-up head from 100% to 49% training accuracy (allidb2, measured);
    # the body learns at a fifth of the head's rate. At least 400 optimiser steps: 6 epochs of PBC or
    # aria_all (~840 training images) are 156; 400 (16 epochs) took held-out macro-F1 from 0.885 to
    # 0.930 on PBC and 0.959 to 0.965 on aria_all, ALL-IDB2 0.973 either way (its 6 epochs gave
    # balanced accuracy 0.83), at about twice the time (PBC 86 -> 186 s, 2 cores); the full C-NMC
    # training set (286 steps an epoch) is not stretched
    train_defaults = {"img_size": 128, "lr": 5e-4, "epochs": 6, "batch_size": 32, "patience": 4,
                      "freeze_bn": True, "body_lr": 0.2, "min_steps": 400}

    def __init__(self, num_classes: int, pretrained: bool = True):
        super().__init__()
        self.net = backbones.efficientnet_lite0(num_classes, pretrained=pretrained)

    # properties, not attributes, so the classifier's weights are stored once (as net._fc.*)
    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return cast(nn.Linear, self.net._fc)

    @property
    def dropout(self) -> nn.Module:  # type: ignore[override]
        return cast(nn.Module, self.net._dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return backbones.lite0_embed(self.net, x)

    def stages(self) -> list[nn.Module]:
        n: Any = self.net
        return [nn.ModuleList([n._conv_stem, n._bn0]), *n._blocks, nn.ModuleList([n._conv_head, n._bn1])]


def network_class(name: str) -> type[Network]:
    spec = get_model(name)
    if spec.family != "network":
        raise BundleError(f"model {name!r} is not a network")
    return cast(type[Network], spec.builder)


def forward_logits(module: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Eval-mode logits, averaged over the D4 views when ``tta``."""
    x = x.contiguous(memory_format=torch.channels_last)
    if not tta:
        return module(x)
    views = dihedral(x, (2, 3))
    return torch.stack([module(v.contiguous(memory_format=torch.channels_last)) for v in views]).mean(0)


def embed_features(module: Network, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Eval-mode penultimate features (``module.embed``), averaged over the D4 views when ``tta``."""
    x = x.contiguous(memory_format=torch.channels_last)
    if not tta:
        return module.embed(x)
    views = dihedral(x, (2, 3))
    return torch.stack([module.embed(v.contiguous(memory_format=torch.channels_last)) for v in views]).mean(0)
