"""The network bundle family: a registered network's weights in safetensors, checked against config.json.

The module is built on the meta device from the config (no memory until the weights agree), the
weights are checked for names, shapes, types, the classifier's width and finite values, and only
then become the parameters: a tampered or mismatched bundle is one line, never a crash or a
memory blow-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.bundle.base import Bundle, bundle_family
from leukoscope.bundle.format import CONFIG, SAFETENSORS, one_line
from leukoscope.errors import BundleError, ConfigError
from leukoscope.models import backbones
from leukoscope.models.networks import Network, embed_features, forward_logits, network_class
from leukoscope.models.preprocess import prepare
from leukoscope.models.registry import list_models

WEIGHTS = SAFETENSORS


def check_weights(module: Network, tensors: dict[str, torch.Tensor], weights: Path,
                  config: dict[str, Any]) -> None:
    """Refuse weights that do not fit the config, with one line: a classifier with another number of
    outputs than the config's classes; missing, extra, reshaped or retyped tensors; NaN or infinity.

    ``module`` may live on the meta device: only its state dict's shapes and types are read.
    """
    head = next(f"{name}.weight" for name, m in module.named_modules() if m is module.head)
    n_classes = len(config["classes"])
    if head in tensors and tensors[head].ndim == 2 and tensors[head].shape[0] != n_classes:
        raise BundleError(f"{weights}: the classifier has {tensors[head].shape[0]} outputs, but {CONFIG} "
                          f"lists {n_classes} classes")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    reshaped = [k for k in expected if k in tensors
                and (tensors[k].shape, tensors[k].dtype) != (expected[k].shape, expected[k].dtype)]
    if missing or extra or reshaped:
        first = (missing or extra or reshaped)[0]
        raise BundleError(f"{weights}: weights do not fit model {config['model']!r} ({len(missing)} "
                          f"missing, {len(extra)} unexpected, {len(reshaped)} of another shape or type; "
                          f"first: {first})")
    bad = next((k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise BundleError(f"{weights}: tensor {bad} holds NaN or infinite values")


def save_weights(module: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    # CPU tensors whatever device trained it: a bundle loads anywhere
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(Path(folder) / WEIGHTS))


@bundle_family("network")
class NetworkBundle(Bundle):
    """A trained network: ``model.safetensors`` + config.json.

    For Grad-CAM and ONNX export, ``bundle.module`` (eval mode, channels_last) and ``bundle.config``
    are all that is needed: the input is ``preprocess.prepare(images, bundle.config)`` (float32
    NCHW, size ``config["preprocessing"]["input_size"]``), the output uncalibrated logits;
    ``bundle.last_conv`` names the last conv layer (``bundle.module.get_submodule(bundle.last_conv)``).
    ``logits`` averages over the eight flips / rotations when ``config["tta"]`` is true.
    """

    weight_files = (WEIGHTS,)
    #: Eager CPU inference is fastest in small batches (activations stay in cache): Lite0 at 224 px
    #: on 2 cores ran ~50 images/s at batch 4-8 and ~25 at batch 32.
    batch_size = 8

    def __init__(self, path: Path, config: dict[str, Any], module: Network):
        super().__init__(path, config)
        self.module = module

    @property
    def last_conv(self) -> str:
        return self.module.last_conv

    @classmethod
    def load(cls, path: Path, config: dict[str, Any]) -> NetworkBundle:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        weights = path / WEIGHTS
        if not weights.is_file():
            raise BundleError(f"{path}: network bundle without {WEIGHTS}")
        try:
            network = network_class(config["model"])
        except (BundleError, ConfigError):
            raise BundleError(f"{path / CONFIG}: model {config['model']!r} is not a registered network; "
                              f"choose from: {', '.join(list_models(family='network'))}") from None
        try:
            # shapes only: nothing is allocated until the weights file agrees (a tampered
            # model_params such as a huge width cannot exhaust memory)
            with torch.device("meta"):
                module = network(num_classes=len(config["classes"]), pretrained=False,
                                 **config.get("model_params", {}))
        except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: torch refusing a size (width -1)
            raise BundleError(f"{path / CONFIG}: model_params do not fit model {config['model']!r} "
                              f"({one_line(e)})") from None
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError) as e:  # truncated, corrupt or not safetensors at all
            raise BundleError(f"{weights}: cannot read the weights ({one_line(e)})") from None
        check_weights(module, tensors, weights, config)
        module.load_state_dict(tensors, assign=True)  # the loaded tensors become the parameters
        backbones.channels_last(module.eval())
        return cls(path, config, module)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = [self.prepared_embed_logits(self.prepare(images[i:i + self.batch_size]), embed=False)[0]
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return prepare(images, self.config)

    def prepared_embed_logits(self, prepared: np.ndarray, embed: bool = True
                              ) -> tuple[np.ndarray, np.ndarray | None]:
        if embed:
            return self._head(self._embed(prepared))
        out = []
        tta = bool(self.config.get("tta", False))
        with torch.inference_mode():
            for i in range(0, len(prepared), self.batch_size):
                x = torch.from_numpy(prepared[i:i + self.batch_size])
                out.append(forward_logits(self.module, x, tta).float().numpy())
        logits = np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
        return self.shifted(logits), None

    def embed_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features and logits in one pass (the head is linear, so averaging the D4 views'
        features when ``config["tta"]`` gives exactly the averaged logits of ``logits``)."""
        embs = [self._embed(self.prepare(images[i:i + self.batch_size]))
                for i in range(0, len(images), self.batch_size)]
        return self._head(torch.cat(embs) if embs else torch.zeros((0, self.module.head.in_features)))

    def _embed(self, prepared: np.ndarray) -> torch.Tensor:
        """Penultimate features of a batch from ``prepare`` (D4 mean when trained with TTA)."""
        tta, size = bool(self.config.get("tta", False)), self.batch_size
        with torch.inference_mode():
            embs = [embed_features(self.module, torch.from_numpy(prepared[i:i + size]), tta).float()
                    for i in range(0, len(prepared), size)]
        return torch.cat(embs) if embs else torch.zeros((0, self.module.head.in_features))

    def _head(self, emb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits = self.module.head(emb).float().numpy()
        return self.shifted(logits), emb.numpy()
