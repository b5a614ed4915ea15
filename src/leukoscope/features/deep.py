"""The ``deep`` feature kind: frozen ImageNet EfficientNet-Lite0 embeddings (1280 per image).

The seed projects' "CNN as feature extractor" step, with a pretrained network instead of one
trained on the same few images. Batched in this process (``parallel = False``: torch already uses
every core, worker processes would each load the network and fight over the same cores); the
network is loaded once per process (by default an ONNX Runtime export of it, made once into the
cache folder: several times faster than eager torch on CPU). Preprocessing is
``models.preprocess.prepare``, the same as the fine-tuned networks use, with an optional crop to
the cell for black-background crops.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from leukoscope.batches import chunks, ordered_map
from leukoscope.errors import ConfigError
from leukoscope.features import FeatureExtractor, register_features
from leukoscope.geometry import D4, dihedral
from leukoscope.models.backbones import LITE0_MEAN, LITE0_STD, LITE0_WIDTH
from leukoscope.models.preprocess import prepare, preprocessing_config
from leukoscope.settings import threads

#: backbone name -> (embedding width, mean, std)
#: "onnx": ONNX Runtime on an exported copy (fast); "torch": eager PyTorch
ENGINES = ("onnx", "torch")
BACKBONES: dict[str, tuple[int, tuple[float, ...], tuple[float, ...]]] = {
    "efficientnet_lite0": (LITE0_WIDTH, LITE0_MEAN, LITE0_STD),
}


@functools.lru_cache(maxsize=2)
def _network(backbone: str) -> Any:
    from leukoscope.models import backbones

    return backbones.channels_last(backbones.efficientnet_lite0(num_classes=1000, pretrained=True).eval())


def _embedder(backbone: str) -> Any:
    """The network cut after global pooling, as a module whose forward returns the embedding."""
    from torch import nn

    from leukoscope.models.backbones import efficientnet_lite0, lite0_embed

    class Embed(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return lite0_embed(self.net, x)

    return Embed(efficientnet_lite0(num_classes=1000, pretrained=True).eval())


@functools.lru_cache(maxsize=4)
def _session(backbone: str, size: int) -> Any:
    """An ONNX Runtime session of the embedding network (exported once into the cache folder).

    ONNX Runtime runs this network about 3-4x faster than eager torch on a laptop CPU.
    """
    from leukoscope.models.onnx import export_module, ort_session
    from leukoscope.settings import cache_dir

    path = cache_dir() / "models" / f"{backbone}-embed-{size}-v{DeepFeatures.version}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_module(_embedder(backbone), size, path, output="embedding")
    return ort_session(path)


@register_features("deep")
class DeepFeatures(FeatureExtractor):
    """Pooled embeddings of a frozen ImageNet network (before its classifier)."""

    version = 1
    parallel = False
    batch_size = 32

    def __init__(self, backbone: str = "efficientnet_lite0", input_size: int = 224,
                 crop_to_cell: bool = False, engine: str = "onnx", views: int = 1):
        if engine not in ENGINES:
            raise ConfigError(f"deep features: engine must be one of {ENGINES}, got {engine!r}")
        if not isinstance(views, int) or isinstance(views, bool) or not 1 <= views <= len(D4):
            raise ConfigError(f"deep features: views must be 1..{len(D4)} (D4 order), got {views!r}")
        self.engine, self.views = engine, views
        if backbone not in BACKBONES:
            raise ConfigError(f"deep features: unknown backbone {backbone!r}; "
                              f"choose from {sorted(BACKBONES)}")
        self.backbone, self.input_size, self.crop_to_cell = backbone, int(input_size), bool(crop_to_cell)
        width, mean, std = BACKBONES[backbone]
        self.width = width
        self.pre = preprocessing_config(self.input_size, mean, std, crop_to_cell=self.crop_to_cell)

    def params(self) -> dict[str, Any]:
        out = {"backbone": self.backbone, "input_size": self.input_size, "crop_to_cell": self.crop_to_cell,
               "engine": self.engine}
        return out if self.views == 1 else {**out, "views": self.views}  # 1: cache keys as before

    def names(self) -> list[str]:
        return [f"deep_{i:04d}" for i in range(self.width)]

    def compute(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings; with ``views`` > 1 their mean over the first views of the dihedral group
        (``views=2``: the image and its left-right mirror), test-time augmentation in embedding space."""
        if self.views == 1:
            return self._compute(images)
        per_view = [self._compute([np.ascontiguousarray(dihedral(im)[v]) for im in images])
                    for v in range(self.views)]
        return np.mean(per_view, axis=0).astype(np.float32)

    def _compute(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not len(images):
            return np.zeros((0, self.width), np.float32)
        if self.engine == "onnx":
            from leukoscope.models.onnx import INPUT, session_batch

            session = _session(self.backbone, self.input_size)
            runs = ordered_map(lambda batch: session.run(None, {INPUT: prepare(batch, self.pre)})[0],
                               chunks(images, session_batch(self.input_size)), threads())
            return np.concatenate(list(runs)).astype(np.float32)
        import torch

        from leukoscope.models.backbones import lite0_embed

        net = _network(self.backbone)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.from_numpy(prepare(images[i:i + self.batch_size], self.pre))
                out.append(lite0_embed(net, x.contiguous(memory_format=torch.channels_last)).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.width), np.float32)
