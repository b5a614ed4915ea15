"""ONNX export of network bundles and an ONNX Runtime bundle that serves them.

``export_onnx`` writes ``model.onnx`` (fp32, one file, dynamic batch axis) into the bundle and, on
request, ``model.int8.onnx``: static QDQ quantisation, per-channel weights, activations calibrated
on images from the bundle's own train / val sides (dynamic quantisation is slower on this model
and loses accuracy). ``OnnxBundle`` is what ``load_bundle`` returns for a network bundle with an
export: the same ``preprocess.prepare`` as PyTorch, then one ORT session using every core.
The weights' digest is recorded at export so a stale ``model.onnx`` is never used.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle import CONFIG, ONNX, ONNX_INT8, Bundle, one_line, read_config, write_json
from leukoscope.data.images import file_digest, load_rgb
from leukoscope.errors import BundleError, DataError, ImageError
from leukoscope.models.preprocess import prepare
from leukoscope.settings import threads

OPSET = 17
INPUT, OUTPUT = "input", "logits"
WEIGHTS = "model.safetensors"
#: Calibration images for int8 (more barely moves the activation ranges; each costs a forward pass).
CALIBRATION_IMAGES = 128
#: Leading convolutions kept in fp32 by the int8 export (see ``fp32_nodes``).
INT8_FP32_CONVS = 7


class OnnxBundle(Bundle):
    """A network bundle run by ONNX Runtime (fp32 or int8) instead of PyTorch."""

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
        weights = Path(path) / WEIGHTS
        return (digest is not None and (Path(path) / model_file).is_file() and weights.is_file()
                and digest == file_digest(weights))

    def _run(self, x: np.ndarray) -> np.ndarray:
        if not self.config.get("tta", False):
            return np.asarray(self.session.run([OUTPUT], {INPUT: x})[0])
        # trained with TTA: logits averaged over the D4 views, as NetworkBundle does in torch
        views = [np.rot90(x, k, axes=(2, 3)) for k in range(4)]
        batch = np.ascontiguousarray(np.concatenate([v for r in views for v in (r, r[..., ::-1])]))
        return np.asarray(self.session.run([OUTPUT], {INPUT: batch})[0]).reshape(8, len(x), -1).mean(axis=0)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = [self._run(prepare(images[i:i + self.batch_size], self.config))
               for i in range(0, len(images), self.batch_size)]
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


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session of ``path`` on ``settings.threads()`` cores, graph fully optimised."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_module(module: Any, size: int, target: Path, output: str = OUTPUT) -> None:
    """Write ``module`` (input ``INPUT``: float NCHW at ``size`` px, any batch) to ``target`` as one
    ONNX file, atomically: the traced exporter, so nothing lands beside it."""
    import torch

    module = module.eval().to(memory_format=torch.contiguous_format)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on constant folding, not user-facing
            torch.onnx.export(module, (torch.zeros(2, 3, size, size),), str(tmp), dynamo=False,
                              opset_version=OPSET, input_names=[INPUT], output_names=[output],
                              dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}})
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def calibration_paths(bundle_dir: Path, n: int = CALIBRATION_IMAGES, seed: int = 0) -> list[str]:
    """Up to ``n`` images from the bundle's train / val sides (never test), class-interleaved."""
    from leukoscope.bundle import SPLIT

    split_csv = Path(bundle_dir) / SPLIT
    if not split_csv.is_file():
        raise BundleError(f"{bundle_dir}: no {SPLIT} to draw int8 calibration images from")
    import pandas as pd

    split = pd.read_csv(split_csv)
    if "side" in split:
        split = split[split["side"].isin(["train", "val"])]
    split = split[split["path"].map(os.path.isfile)]
    if split.empty:
        raise DataError(f"{split_csv}: none of its train/val images exist on this machine")
    shuffled = split.sample(frac=1.0, random_state=seed)
    order = shuffled.groupby("label").cumcount().sort_values(kind="stable").index
    return list(shuffled.loc[order, "path"][:n])


def _check_calibration(paths: Sequence[str]) -> None:
    """Refuse calibration images of which none decodes, before anything is written.

    Unreadable ones are skipped while calibrating, but with none left ONNX Runtime fails deep
    inside ``quantize_static`` ("No data is collected"). Stops at the first readable image.
    """
    if not paths:
        raise DataError("--calibration: no images found for int8 calibration")
    first = ""
    for p in paths:
        try:
            load_rgb(p)
            return
        except ImageError as e:
            first = first or str(e)
    raise DataError(f"none of the {len(paths)} int8 calibration image(s) can be read (first: {first})")


def _calibration_batches(paths: Sequence[str], config: dict[str, Any], batch: int = 16
                         ) -> Iterator[dict[str, np.ndarray]]:
    """Preprocessed batches of the readable calibration images, as ORT feeds."""
    images: list[np.ndarray] = []
    for p in paths:
        try:
            images.append(load_rgb(p))
        except ImageError:
            continue
        if len(images) == batch:
            yield {INPUT: prepare(images, config)}
            images = []
    if images:
        yield {INPUT: prepare(images, config)}


def fp32_nodes(model: Any) -> list[str]:
    """Nodes int8 export leaves in fp32: the first convolutions (up to a quarter) and the classifier.

    Rounding errors made at full resolution are carried through every later layer. Measured on
    the aria_all Lite0 bundle (512 images, label agreement with fp32): all layers quantised
    93.2%; stem kept 97.1%; first 7 convs and the classifier kept 99.4% (accuracy 0.988 vs fp32
    0.990), still ~1.4x fp32's end-to-end predict rate at 224 px.
    """
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:min(INT8_FP32_CONVS, len(convs) // 4)] + heads


def _export_int8(fp32: Path, target: Path, paths: Sequence[str], config: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _calibration_batches(paths, config)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quant.") as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        out = Path(work) / "int8.onnx"
        keep = fp32_nodes(onnx.load(str(pre)))
        # reduce_range: 7-bit weights. Without VNNI, x86 multiplies u8 x s8 pairs into saturating
        # int16 sums; full-range weights overflow them (measured: 70% label agreement, 100% with it).
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep)
        out.replace(target)


def export_onnx(bundle_dir: Path | str, int8: bool = False,
                calibration: Sequence[str] | None = None) -> dict[str, Any]:
    """Add ``model.onnx`` (and with ``int8`` ``model.int8.onnx``) to a network bundle.

    ``calibration``: images for the int8 activation ranges (default: the bundle's train/val sides).
    Returns what was written, as recorded under ``config["onnx"]``.
    """
    from leukoscope.bundle import load_bundle

    bundle_dir = Path(bundle_dir)
    config = read_config(bundle_dir)
    if config["family"] != "network":
        raise BundleError(f"{bundle_dir}: ONNX export is for network bundles; this {config['family']} "
                          "bundle computes its features in Python")
    paths: list[str] = []
    if int8:
        paths = list(calibration) if calibration is not None else calibration_paths(bundle_dir)
        _check_calibration(paths)
    network: Any = load_bundle(bundle_dir, runtime="torch")  # a NetworkBundle: the family says so
    export_module(network.module, int(config["preprocessing"]["input_size"]), bundle_dir / ONNX)
    info: dict[str, Any] = {"opset": OPSET, "fp32": ONNX, "weights_digest": file_digest(bundle_dir / WEIGHTS)}
    if int8:
        _export_int8(bundle_dir / ONNX, bundle_dir / ONNX_INT8, paths, config)
        info |= {"int8": ONNX_INT8, "int8_calibration_images": len(paths), "int8_scheme":
                 "static QDQ, per-channel 7-bit int8 weights, uint8 activations (MinMax); "
                 "first convolutions and classifier in fp32"}
    else:
        (bundle_dir / ONNX_INT8).unlink(missing_ok=True)  # an old int8 file would be stale
    write_json(bundle_dir / CONFIG, {**config, "onnx": info})
    return {**info, "bundle": str(bundle_dir)}
