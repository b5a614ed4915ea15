"""ONNX export of network bundles: ``model.onnx`` and, on request, a static int8 ``model.int8.onnx``.

``export_onnx`` writes ``model.onnx`` (fp32, one file, dynamic batch axis) into the bundle and, on
request, ``model.int8.onnx``: static QDQ quantisation, per-channel weights, activations calibrated
on images from the bundle's own train / val sides (dynamic quantisation is slower on this model
and loses accuracy), convolution biases corrected for the shift weight rounding makes, as few
leading convolutions left in fp32 as keep its calls those of fp32 on held-out images. The weights'
digest and each written ONNX file's SHA-256 go into config.json, so ``OnnxBundle`` never runs an
export of other weights, nor an ONNX file put there by hand (``verify`` checks them too).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle.base import load_bundle, read_split_csv
from leukoscope.bundle.format import (
    CONFIG,
    ONNX,
    ONNX_DIGESTS,
    ONNX_INT8,
    SAFETENSORS,
    SPLIT,
    onnx_digests,
    read_config,
)
from leukoscope.bundle.onnx import (
    OnnxBundle,
    enough_to_tell,
    int8_agrees,
    model_files,
    recorded_files,
)
from leukoscope.data.images import file_digest, load_batch, load_rgb
from leukoscope.errors import BundleError, DataError, ImageError
from leukoscope.io import atomic_path, write_json_atomic
from leukoscope.models.onnx import (
    INPUT,
    OPSET,
    export_module,
    has_vnni,
    optimized_twin,
    ort_session,
    write_optimized_twins,
)
from leukoscope.models.preprocess import prepare

#: Calibration images for int8 (more barely moves the activation ranges; each costs a forward pass).
CALIBRATION_IMAGES = 128
#: How many leading convolutions int8 export may keep in fp32, fewest (fastest) first: the first
#: count whose calls agree with fp32's (``onnx.int8_agrees``) is kept, else the last (``fp32_nodes``).
INT8_FP32_CONVS = (3, 7)
#: Train / val images, none of them calibration images, on which export compares int8's calls with fp32's.
AGREEMENT_IMAGES = 256


def calibration_paths(bundle_dir: Path, n: int = CALIBRATION_IMAGES, seed: int = 0) -> list[str]:
    """Up to ``n`` images from the bundle's train / val sides (never test), class-interleaved."""
    split_csv = Path(bundle_dir) / SPLIT
    if not split_csv.is_file():
        raise BundleError(f"{bundle_dir}: no {SPLIT} to draw int8 calibration images from")
    split = read_split_csv(split_csv)
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


def fp32_nodes(model: Any, leading: int) -> list[str]:
    """Nodes int8 export leaves in fp32: the first ``leading`` convolutions (up to a quarter) and the
    classifier.

    Rounding errors made at full resolution are carried through every later layer. Measured on
    the aria_all Lite0 bundle (512 images, label agreement with fp32): all layers quantised
    93.2%; stem kept 97.1%; first 7 convs and the classifier kept 99.4%. With bias correction, five
    Lite0 bundles at 128 / 224 px (aria_all x2, ALL-IDB2, PBC x2; 800 cells each) differ from fp32 on
    26 cells of 4,000 with the first 7 kept and 27 with the first 3, whose model runs 20-25 % faster
    (5.3 against 6.5 ms per 8 cells at 128 px, one core); on the held-out cells export compares on,
    6 and 12 of 1,200. Hence ``INT8_FP32_CONVS``: 3 where it agrees, else 7.
    """
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:min(leading, len(convs) // 4)] + heads


def _conv_input_means(pre: Any, convs: Sequence[str], work: Path,
                      batches: Iterator[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel mean of the input of each convolution named in ``convs`` over the calibration
    batches, run in fp32 (what ``_correct_biases`` needs)."""
    import onnx

    wanted = set(convs)
    inputs = list(dict.fromkeys(n.input[0] for n in pre.graph.node if n.name in wanted))
    probe = onnx.ModelProto()
    probe.CopyFrom(pre)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in inputs if t not in known)
    onnx.save(probe, str(work / "means.onnx"))
    session = ort_session(work / "means.onnx")
    sums: dict[str, np.ndarray] = {}
    count = 0
    for feed in batches:
        for t, v in zip(inputs, session.run(inputs, feed), strict=True):
            sums[t] = sums.get(t, 0) + v.astype(np.float64).mean(axis=(2, 3)).sum(axis=0)
        count += len(feed[INPUT])
    return {t: s / max(count, 1) for t, s in sums.items()}


def _correct_biases(pre: Any, quant: Any, work: Path, batches: Iterator[dict[str, np.ndarray]]) -> int:
    """Bias correction (Nagel et al. 2019, "Data-free quantization", section 4.2): rounding a
    convolution's weights to int8 shifts the mean of its output by ``(W - Wq) E[x]``; adding that
    to the (int32) bias of the quantised model removes the shift. Returns how many were corrected.

    Weight rounding, not activation ranges, is what moves this model: on the aria_all Lite0 bundle at
    128 px (800 cells) int8 weights alone, activations left in fp32, change as many labels as the whole
    int8 model (11 vs 13 of 800), and most labels that change are unfamiliarity flags near the
    threshold (the score reads the penultimate features). With corrected biases the int8 model
    changes 5-7 labels (99.1-99.4 % agreement over three calibration draws; MSE-fitted activation
    ranges on top did not help) at the same speed.
    """
    from onnx import numpy_helper

    fp32 = {i.name: i for i in pre.graph.initializer}
    weights = {n.name: numpy_helper.to_array(fp32[n.input[1]]) for n in pre.graph.node
               if n.op_type == "Conv" and n.input[1] in fp32}
    inits = {i.name: i for i in quant.graph.initializer}
    producer = {o: n for n in quant.graph.node for o in n.output}

    def dequantized(node: Any) -> tuple[str, np.ndarray, np.ndarray] | None:
        """(initializer name, stored values, per-channel scale) of a DequantizeLinear of an initializer."""
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            return None
        stored = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
        zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0
        along_axis0 = (-1, *[1] * (stored.ndim - 1))  # per-channel parameters: axis 0 (ORT's default)
        return (node.input[0], stored - np.reshape(zero, along_axis0 if np.size(zero) > 1 else ()),
                numpy_helper.to_array(inits[node.input[1]]).astype(np.float64))

    Stored = tuple[str, np.ndarray, np.ndarray]
    plan: list[tuple[Any, Stored, Stored]] = []
    for conv in (n for n in quant.graph.node if n.op_type == "Conv" and len(n.input) > 2):
        wdq, bdq = dequantized(producer.get(conv.input[1])), dequantized(producer.get(conv.input[2]))
        if wdq is not None and bdq is not None and conv.name in weights:
            plan.append((conv, wdq, bdq))
    means = _conv_input_means(pre, [c.name for c, _, _ in plan], work, batches)
    inputs = {n.name: n.input[0] for n in pre.graph.node}
    for conv, (_, wq, ws), (bias, bq, bs) in plan:
        groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
        w = weights[conv.name]
        delta = (w - wq * ws.reshape(-1, *[1] * (w.ndim - 1))).sum(axis=tuple(range(2, w.ndim)))
        mu = means[inputs[conv.name]].reshape(groups, -1)
        shift = np.einsum("gof,gf->go", delta.reshape(groups, -1, delta.shape[1]), mu).ravel()
        corrected = np.clip(np.round(bq + shift / bs), np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        inits[bias].CopyFrom(numpy_helper.from_array(corrected.astype(np.int32), bias))
    return len(plan)


def _export_int8(fp32: Path, target: Path, paths: Sequence[str], config: dict[str, Any],
                 full_range: bool, leading: int) -> int:
    """Write the int8 model; how many convolutions it kept in fp32 (``fp32_nodes``: at most a quarter of
    them, so fewer than ``leading`` in a small network)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _calibration_batches(paths, config)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quant.") as work, \
            atomic_path(target) as out:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        pre_model = onnx.load(str(pre))
        # reduce_range: 7-bit weights. Without VNNI, x86 multiplies u8 x s8 pairs into saturating
        # int16 sums; full-range weights overflow them (measured: 70% label agreement, 100% with it).
        # With VNNI the sums are int32 and 8-bit weights round half as coarsely (aria_all Lite0 at
        # 128 px, 800 cells: 98.3% label agreement with fp32 instead of 94.9%).
        kept = fp32_nodes(pre_model, leading)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=not full_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=kept)
        quant = onnx.load(str(out))
        _correct_biases(pre_model, quant, Path(work), _calibration_batches(paths, config))
        onnx.save(quant, str(out))
    convs = {n.name for n in pre_model.graph.node if n.op_type == "Conv"}
    return sum(name in convs for name in kept)


def _calls(bundle_dir: Path, config: dict[str, Any], model_file: str, images: Sequence[np.ndarray]
           ) -> tuple[np.ndarray, float]:
    """What predict would call each image with ``model_file`` (a class index, or -1 for unfamiliar),
    and the seconds it took."""
    bundle = OnnxBundle(bundle_dir, config, ort_session(bundle_dir / model_file), model_file)
    bundle.assess(images[:8])  # the first run allocates
    start = time.perf_counter()
    probs, scores = bundle.assess(images)
    seconds = time.perf_counter() - start
    calls = bundle.decide(probs)
    if scores is not None and bundle.unfamiliar is not None:
        calls = np.where(bundle.unfamiliar.flag(scores), -1, calls)
    return calls, seconds


def held_out_images(bundle_dir: Path, calibration: Sequence[str]) -> list[np.ndarray]:
    """Up to ``AGREEMENT_IMAGES`` train / val images not used for calibration (none when the bundle has
    no split), decoded: where export compares int8's calls with fp32's."""
    try:
        ranked = calibration_paths(bundle_dir, len(calibration) + AGREEMENT_IMAGES)
    except (BundleError, DataError):
        return []
    used = {os.path.realpath(p) for p in calibration}  # by file: a linked folder names them otherwise
    return load_batch([p for p in ranked if os.path.realpath(p) not in used][:AGREEMENT_IMAGES])[1]


def int8_agreement(fp32: tuple[np.ndarray, float], int8: tuple[np.ndarray, float]) -> dict[str, Any]:
    """How often int8 made fp32's call (class, or unfamiliar) and how much faster it ran here (``_calls``
    of each on the same images): what ``--runtime auto`` reads (``onnx.auto_runtime``)."""
    (f, f_s), (q, q_s) = fp32, int8
    return {"int8_agreement": round(float(np.mean(f == q)), 4), "int8_agreement_images": len(f),
            "int8_speedup": round(f_s / max(q_s, 1e-9), 2)}


def export_onnx(bundle_dir: Path | str, int8: bool = False,
                calibration: Sequence[str] | None = None) -> dict[str, Any]:
    """Add ``model.onnx`` (and with ``int8`` ``model.int8.onnx``) to a network bundle.

    ``calibration``: images for the int8 activation ranges (default: the bundle's train/val sides).
    Each model file gets its ``optimized_twin`` for this machine (a session opens in a fifth of the
    time), ``optimized_for`` recording which machine, and every file its SHA-256 (``ONNX_DIGESTS``).
    Returns what was written, as recorded under ``config["onnx"]``.
    """
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
    export_module(network.module, int(config["preprocessing"]["input_size"]), bundle_dir / ONNX,
                  embedding=True)
    info: dict[str, Any] = {"opset": OPSET, "fp32": ONNX,
                            "weights_digest": file_digest(bundle_dir / SAFETENSORS)}
    if int8:
        full_range = has_vnni()  # decided by the CPU exporting; a CPU without VNNI refuses such a file
        held_out = held_out_images(bundle_dir, paths)
        fp32 = _calls(bundle_dir, config, ONNX, held_out) if held_out else None  # the same for every rung
        # too few held-out cells for any agreement to count: straight to the most fp32 convolutions
        ladder = INT8_FP32_CONVS if enough_to_tell(len(held_out)) else INT8_FP32_CONVS[-1:]
        for leading in ladder:
            kept = _export_int8(bundle_dir / ONNX, bundle_dir / ONNX_INT8, paths, config, full_range, leading)
            measured = (int8_agreement(fp32, _calls(bundle_dir, config, ONNX_INT8, held_out))
                        if fp32 is not None else {"int8_agreement_images": 0})
            if int8_agrees(measured):
                break
        info |= {"int8": ONNX_INT8, "int8_calibration_images": len(paths), "int8_vnni": full_range,
                 "int8_fp32_convs": kept,
                 "int8_scheme": f"static QDQ, per-channel {8 if full_range else 7}-bit int8 weights, uint8 "
                 "activations (MinMax), convolution biases corrected for weight rounding; first "
                 f"{kept} convolutions and classifier in fp32"
                 + (f" ({leading} tried; a network keeps at most a quarter)" if kept < leading else ""),
                 **measured}
    else:
        for stale in (ONNX_INT8, optimized_twin(Path(ONNX_INT8)).name):  # an old int8 file would be stale
            (bundle_dir / stale).unlink(missing_ok=True)
    info["optimized_for"] = write_optimized_twins([bundle_dir / f for f in model_files(info)])
    info[ONNX_DIGESTS] = onnx_digests(bundle_dir, recorded_files(info))
    write_json_atomic(bundle_dir / CONFIG, {**config, "onnx": info})
    return {**info, "bundle": str(bundle_dir)}
