"""A network as an ONNX file and an ONNX Runtime session of one: what bundles and deep features share.

``export_module`` writes a torch module to one ONNX file (input ``INPUT``: float NCHW at a fixed
size, any batch); ``ort_session`` opens such a file on the CPU, one core per call, or its
``optimized_twin`` where that was written for this machine (``write_optimized_twins``). Deep features
export their frozen backbone with it, ``bundle.export`` a trained network.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from leukoscope.errors import BundleError
from leukoscope.io import atomic_path

OPSET = 17
INPUT, OUTPUT = "input", "logits"
#: Pixels per session run (images x side x side), fp32 and int8: the activations of a run should stay
#: in the core's cache. Lite0 on one core, ms per cell at 1 / 2 / 4 / 8 images a run: fp32 at 128 px
#: 1.67 / 1.71 / 1.60 / 1.55 (32 images: 1.94), at 224 px 4.71 / 4.70 / 4.85 / 5.32; int8 at 128 px
#: 0.68 / 0.66 / 0.68 / 0.71.
SESSION_PIXELS = {"fp32": 8 * 128 * 128, "int8": 2 * 128 * 128}
#: Second output of a network bundle's export: the penultimate features (the unfamiliarity score's input).
EMBEDDING = "embedding"


def session_batch(size: int, int8: bool = False) -> int:
    """Images per session run at input ``size`` (``SESSION_PIXELS``), at least one."""
    return max(1, SESSION_PIXELS["int8" if int8 else "fp32"] // (size * size))


#: The CPU's instruction sets that ONNX Runtime's kernels and graph layout depend on (``cpu_signature``).
_VECTOR_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq",
                 "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
                 "asimd", "asimddp", "sve", "i8mm", "bf16")


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as Linux lists them; None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return frozenset(word for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
                     for word in line.split(":", 1)[1].split())


def has_vnni() -> bool:
    """Whether this CPU multiplies uint8 x int8 with VNNI (AVX512-VNNI or AVX-VNNI) into int32.

    Without it, x86 ONNX Runtime sums pairs of products into saturating int16 first, which full-range
    int8 weights overflow; int8 exports for such a CPU use 7-bit weights (``bundle.export``).
    Where the flags cannot be read (not Linux), assume the worst: 7-bit weights are correct everywhere.
    """
    flags = _cpu_flags() or frozenset()
    return "avx512_vnni" in flags or "avx_vnni" in flags


def cpu_signature() -> str | None:
    """What a fully optimised ONNX Runtime graph is tied to: the runtime's version, the machine and
    the CPU's vector instruction sets (its layout pass sizes blocks for them); None where the flags
    cannot be read."""
    import platform

    import onnxruntime as ort

    flags = _cpu_flags()
    if flags is None:
        return None
    vector = sorted(flags & set(_VECTOR_FLAGS))
    return " ".join([f"onnxruntime-{ort.__version__}", platform.machine(), *vector])


def ort_session(path: Path, optimized_for: str | None = None,
                check: Callable[[Path, bytes], None] | None = None) -> Any:
    """A single-threaded ONNX Runtime CPU session of ``path``, graph fully optimised.

    Callers use the cores by running one batch per core at once (sessions are thread-safe;
    ``batches.ordered_map``): on 2 cores that beat one two-thread session fed by a decode thread,
    because decoding and the model never wait on each other and no pool threads spin or wake
    (aria_all Lite0 at 128 px, 800 cells decoded and scored: 0.97 s against 1.22 s, idle machine).
    ``optimized_for``: the ``cpu_signature`` that ``path``'s ``optimized_twin`` was written for; on
    that machine and runtime the twin opens instead, its optimisation already done (any other
    signature, or a twin that will not open, falls back to ``path``).
    ``check``: given a file's bytes before a session opens from those same bytes (so the file cannot
    change in between), it raises for a file that must not run: the twin's error falls back to
    ``path``, ``path``'s goes to the caller.
    """
    import onnxruntime as ort

    def source(file: Path) -> str | bytes:
        if check is None:
            return str(file)
        data = file.read_bytes()
        check(file, data)
        refuse_external_data(file, data)
        return data

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    twin = optimized_twin(path)
    if optimized_for is not None and twin.is_file() and optimized_for == cpu_signature():
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(source(twin), opts, providers=["CPUExecutionProvider"])
        except Exception:  # ORT's own error types, or check's: a refused twin is only a slower start
            pass
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(source(path), opts, providers=["CPUExecutionProvider"])


def refuse_external_data(file: Path, data: bytes) -> None:
    """A ``BundleError`` for an ONNX file whose tensors live in other files (ONNX's external data).

    Opened from bytes, ONNX Runtime would look for them relative to the working directory, not the bundle:
    a hostile bundle could have a user's own file read in as weights. Export never writes external data.
    Parsing the graph costs ~7 ms for Lite0 (13.5 MB)."""
    import onnx

    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends: not an ONNX file
        why = " ".join(str(e).split()) or type(e).__name__
        raise BundleError(f"{file}: cannot load ({why})") from None  # as ONNX Runtime's refusals read
    tensors = _graph_tensors(model.graph) + [t for f in model.functions for t in _node_tensors(f.node)]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise BundleError(f"{file}: tensor {tensor.name!r} refers to an external data file "
                              f"({where!r}); a bundle's ONNX model must hold its own weights: re-export it")


def _graph_tensors(graph: Any) -> list[Any]:
    """Every tensor of ``graph``: initializers, sparse ones, and those of its nodes."""
    sparse = [t for s in graph.sparse_initializer for t in (s.values, s.indices)]
    return [*graph.initializer, *sparse, *_node_tensors(graph.node)]


def _node_tensors(nodes: Any) -> list[Any]:
    """The tensors in ``nodes``' attributes, and in the graphs nested there (If / Loop / Scan bodies)."""
    out: list[Any] = []
    for node in nodes:
        for a in node.attribute:
            out += ([a.t] if a.HasField("t") else []) + list(a.tensors)
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out += _graph_tensors(g)
    return out


def optimized_twin(path: Path) -> Path:
    """Where ``write_optimized_twins`` puts ``path``'s graph: ``model.onnx`` -> ``model.opt.onnx``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + ".opt.onnx")


def write_optimized_twins(paths: Sequence[Path]) -> str | None:
    """Write each of ``paths``' graphs as ONNX Runtime optimises it on this CPU (every level, the
    CPU's block layout included) beside it; returns the ``cpu_signature`` they are for (None, and
    nothing written, where there is none).

    A session then opens in 5-6 ms instead of 25-35 ms (Lite0 fp32 at 128 px; int8 6 instead of
    15), a tenth of a short ``predict``, with the same outputs and speed. Another machine or runtime
    version reads the path itself, the standard ONNX file that other tools read too. (A twin
    optimised only as far as stays portable was no use: it ran Lite0 3.5x slower, its fusions
    keeping the block layout from applying at load.)
    """
    import onnxruntime as ort

    signature = cpu_signature()
    for path in paths:
        if signature is None:
            optimized_twin(path).unlink(missing_ok=True)
            continue
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # its warning that the file is for this machine is why it is recorded
        with atomic_path(optimized_twin(path)) as tmp:
            opts.optimized_model_filepath = str(tmp)
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return signature


def export_module(module: Any, size: int, target: Path, output: str = OUTPUT,
                  embedding: bool = False) -> None:
    """Write ``module`` (input ``INPUT``: float NCHW at ``size`` px, any batch) to ``target`` as one
    ONNX file, atomically: the traced exporter, so nothing lands beside it. ``embedding``: a network
    also gives its penultimate features as output ``EMBEDDING``."""
    import torch

    module = module.eval().to(memory_format=torch.contiguous_format)
    outputs = [output]
    if embedding:
        net = module

        class LogitsAndEmbedding(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                e = self.net.embed(x)
                return self.net.head(e), e

        module, outputs = LogitsAndEmbedding().eval(), [output, EMBEDDING]
    with atomic_path(target) as tmp, torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on constant folding, not user-facing
        torch.onnx.export(module, (torch.zeros(2, 3, size, size),), str(tmp), dynamo=False,
                          opset_version=OPSET, input_names=[INPUT], output_names=outputs,
                          dynamic_axes={INPUT: {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
