"""The ONNX Runtime runtime of network bundles: ``OnnxBundle`` runs an exported ``model.onnx``
(or ``model.int8.onnx``) instead of PyTorch.

It is what ``load_bundle`` returns for a network bundle with a current export: the same
``preprocess.prepare`` as PyTorch, then one ORT session using every core. The weights' digest is
recorded at export (``bundle.export``), so a stale ``model.onnx`` is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle.base import Bundle, bundle_runtime
from leukoscope.bundle.format import CONFIG, ONNX, ONNX_INT8, SAFETENSORS, one_line
from leukoscope.data.images import file_digest
from leukoscope.errors import BundleError
from leukoscope.geometry import D4, dihedral
from leukoscope.models.onnx import INPUT, OUTPUT, ort_session
from leukoscope.models.preprocess import prepare


@bundle_runtime("onnx")
@bundle_runtime("onnx-int8")
class OnnxBundle(Bundle):
    """A network bundle run by ONNX Runtime (fp32 or int8) instead of PyTorch."""

    weight_files = (SAFETENSORS,)
    batch_size = 32

    def __init__(self, path: Path, config: dict[str, Any], session: Any, model_file: str):
        super().__init__(path, config)
        self.session = session
        self.model_file = model_file

    @classmethod
    def load(cls, path: Path, config: dict[str, Any], model_file: str = ONNX) -> OnnxBundle:
        path = Path(path)
        onnx_path = path / model_file
        if not cls.available(path, config, model_file):
            why = "exported from other weights" if onnx_path.is_file() else "not found"
            raise BundleError(f"{onnx_path}: {why}; run `leukoscope export {path} --onnx"
                              f"{' --int8' if model_file == ONNX_INT8 else ''}`")
        try:
            session = ort_session(onnx_path)
        except Exception as e:  # ORT raises its own types for corrupt or truncated files
            raise BundleError(f"{onnx_path}: cannot load ({one_line(e)})") from None
        check_session(session, onnx_path, config)
        return cls(path, config, session, model_file)

    @staticmethod
    def available(path: Path, config: dict[str, Any], model_file: str = ONNX) -> bool:
        """True when ``model_file`` was exported from the weights now in the bundle (not stale)."""
        digest = config.get("onnx", {}).get("weights_digest")
        weights = Path(path) / SAFETENSORS
        return (digest is not None and (Path(path) / model_file).is_file() and weights.is_file()
                and digest == file_digest(weights))

    def _run(self, x: np.ndarray) -> np.ndarray:
        if not self.config.get("tta", False):
            return np.asarray(self.session.run([OUTPUT], {INPUT: x})[0])
        # trained with TTA: logits averaged over the D4 views, as NetworkBundle does in torch
        batch = np.ascontiguousarray(np.concatenate(dihedral(x, (2, 3))))
        scores = np.asarray(self.session.run([OUTPUT], {INPUT: batch})[0])
        return scores.reshape(len(D4), len(x), -1).mean(axis=0)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = [self._run(prepare(images[i:i + self.batch_size], self.config))
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return prepare(images, self.config)

    def prepared_logits(self, prepared: np.ndarray) -> np.ndarray:
        out = [self._run(prepared[i:i + self.batch_size]) for i in range(0, len(prepared), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def check_session(session: Any, onnx_path: Path, config: dict[str, Any]) -> None:
    """Refuse an ONNX model that does not fit the config: its input is float NCHW at the config's
    ``input_size``, its output one score per class (else a malformed CSV, or a 500 from serve)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT not in inputs or OUTPUT not in outputs:
        raise BundleError(f"{onnx_path}: expected input {INPUT!r} and output {OUTPUT!r}, found "
                          f"{sorted(inputs)} and {sorted(outputs)}")
    size = config["preprocessing"]["input_size"]
    shape = list(inputs[INPUT].shape)
    if len(shape) != 4 or shape[1] != 3 or any(isinstance(d, int) and d != size for d in shape[2:]):
        raise BundleError(f"{onnx_path}: takes input of shape {shape}, but {CONFIG} says 3 x {size} x {size}")
    out = list(outputs[OUTPUT].shape)
    n_classes = len(config["classes"])
    if len(out) != 2 or out[1] != n_classes:
        raise BundleError(f"{onnx_path}: gives {out[-1] if out else 'no'} scores per image, but {CONFIG} "
                          f"lists {n_classes} classes")
