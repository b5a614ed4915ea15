"""A network as an ONNX file and an ONNX Runtime session of one: what bundles and deep features share.

``export_module`` writes a torch module to one ONNX file (input ``INPUT``: float NCHW at a fixed
size, any batch); ``ort_session`` opens such a file on the CPU, one core per call. Deep features
export their frozen backbone with it, ``bundle.export`` a trained network.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from leukoscope.io import atomic_path

OPSET = 17
INPUT, OUTPUT = "input", "logits"
#: Images per session run: on one core, 8 ran Lite0 at 128 px 15 % faster than 32 (the activations
#: stay in the core's cache; 800 aria_all cells through ``predict``, idle 2 cores).
SESSION_BATCH = 8
#: Second output of a network bundle's export: the penultimate features (the unfamiliarity score's input).
EMBEDDING = "embedding"


def has_vnni() -> bool:
    """Whether this CPU multiplies uint8 x int8 with VNNI (AVX512-VNNI or AVX-VNNI) into int32.

    Without it, x86 ONNX Runtime sums pairs of products into saturating int16 first, which full-range
    int8 weights overflow; int8 exports for such a CPU use 7-bit weights (``bundle.export``).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume the worst, 7-bit weights are correct everywhere
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def ort_session(path: Path) -> Any:
    """A single-threaded ONNX Runtime CPU session of ``path``, graph fully optimised.

    Callers use the cores by running one batch per core at once (sessions are thread-safe;
    ``batches.ordered_map``): on 2 cores that beat one two-thread session fed by a decode thread,
    because decoding and the model never wait on each other and no pool threads spin or wake
    (aria_all Lite0 at 128 px, 800 cells decoded and scored: 0.97 s against 1.22 s, idle machine).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


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
