"""Cells per second on the same images: notebook loop vs leukoscope predict (PyTorch, ONNX fp32, int8).

    python benchmarks/throughput.py [--bundle DIR] [--images 512] [--batch-size 64]

(a) a plain PyTorch loop at batch 1, the way notebooks do it (PIL open, resize, tensor, model);
(b) ``leukoscope predict`` with PyTorch; (c) with ONNX Runtime fp32; (d) with the static int8 model.
Every figure is end to end from files on disk (decode, resize, model, CSV for b-d), on the same
images, after a short warm-up, best of ``--repeat`` interleaved rounds; the page cache is warmed
first so no method pays for the disk.
The FLOP-bound limit is this machine's measured float32 matmul rate divided by the model's FLOPs
per image (``torch.utils.flop_counter``): no implementation can beat it without skipping work.

Without ``--bundle`` it trains a quick EfficientNet-Lite0 at 224 px (head warm-up and one epoch on a
quarter of aria_all); speed does not depend on how well the weights are trained. A given bundle is
copied to a temporary folder, set to ``--size`` and exported there, so it is left as it was. Results also go
to benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from leukoscope.bundle import load_bundle
from leukoscope.data.images import iter_image_files
from leukoscope.settings import data_root
from machine import quick_bundle, warm_page_cache

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"


def evenly(paths: list[Path], n: int) -> list[Path]:
    idx = np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)
    return [paths[i] for i in idx]


def notebook_loop(bundle_dir: Path, paths: list[Path]) -> float:
    """(a): batch 1, PIL + numpy + torch per image, as tutorials write it. Returns seconds."""
    from PIL import Image

    bundle = load_bundle(bundle_dir, runtime="torch")
    model = bundle.module.eval().to(memory_format=torch.contiguous_format)
    pre = bundle.config["preprocessing"]
    size = pre["input_size"]
    mean = torch.tensor(pre["mean"]).view(3, 1, 1)
    std = torch.tensor(pre["std"]).view(3, 1, 1)

    def run(ps: list[Path]) -> None:
        with torch.no_grad():
            for p in ps:
                img = Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
                x = (x - mean) / std
                model(x.unsqueeze(0)).softmax(dim=1)

    run(paths[:8])
    t = time.perf_counter()
    run(paths)
    return time.perf_counter() - t


def leukoscope_predict(bundle_dir: Path, runtime: str, paths: list[Path], batch_size: int,
                       work: Path) -> float:
    """(b)-(d): ``leukoscope predict`` end to end into a CSV. Returns seconds."""
    from leukoscope.predict.local import predict

    bundle = load_bundle(bundle_dir, runtime=runtime)
    predict(bundle, paths[:batch_size], work / f"warm-{runtime}.csv", batch_size=batch_size)
    t = time.perf_counter()
    summary = predict(bundle, paths, work / f"{runtime}.csv", batch_size=batch_size)
    seconds = time.perf_counter() - t
    assert summary.predicted == len(paths), summary.skipped
    return seconds


def matmul_flops(n: int = 2048, repeat: int = 10) -> float:
    """Measured float32 matmul FLOP/s on all cores (best of ``repeat``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def model_flops(bundle_dir: Path) -> float:
    """FLOPs of one forward pass for one image at the bundle's input size."""
    from torch.utils.flop_counter import FlopCounterMode

    bundle = load_bundle(bundle_dir, runtime="torch")
    size = bundle.config["preprocessing"]["input_size"]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        bundle.module(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="An efficientnet_lite0 bundle (default: train a quick one).")
    ap.add_argument("--images", type=int, default=512, help="Number of aria_all images (evenly spaced).")
    ap.add_argument("--size", type=int, default=224, help="Input size (a given bundle's copy is set to it: "
                    "the networks are fully convolutional, so speed at this size needs no retraining).")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="Rounds; each method's best round counts (the "
                    "machine is shared: the best round is the one least disturbed, as timeit reports).")
    args = ap.parse_args(argv)

    paths = evenly(list(iter_image_files(data_root() / "aria_all")), args.images)
    warm_page_cache(paths)  # every method reads from memory
    with tempfile.TemporaryDirectory(prefix="leukoscope-throughput-") as tmp:
        work = Path(tmp)
        source = args.bundle or quick_bundle([data_root() / "aria_all"], work / "trained",
                                             model="efficientnet_lite0", img_size=args.size, epochs=1,
                                             subset=0.25, batch_size=32, seed=0)
        bundle_dir = work / "bundle"
        shutil.copytree(source, bundle_dir)
        config = json.loads((bundle_dir / "config.json").read_text())
        config["input_size"] = config["preprocessing"]["input_size"] = args.size
        (bundle_dir / "config.json").write_text(json.dumps(config))
        from leukoscope.bundle.export import export_onnx

        t = time.perf_counter()
        export_onnx(bundle_dir, int8=True)
        export_s = time.perf_counter() - t
        config = json.loads((bundle_dir / "config.json").read_text())
        size = config["preprocessing"]["input_size"]

        runs: dict[str, Callable[[], float]] = {
            "(a) PyTorch loop, batch 1 (notebook)": lambda: notebook_loop(bundle_dir, paths),
            "(b) leukoscope predict, PyTorch": lambda: leukoscope_predict(bundle_dir, "torch", paths,
                                                                          args.batch_size, work),
            "(c) leukoscope predict, ONNX Runtime fp32": lambda: leukoscope_predict(
                bundle_dir, "onnx", paths, args.batch_size, work),
            "(d) leukoscope predict, ONNX Runtime int8": lambda: leukoscope_predict(
                bundle_dir, "onnx-int8", paths, args.batch_size, work),
        }
        rates = {name: 0.0 for name in runs}
        for _ in range(args.repeat):  # methods interleaved, so a burst of other work hits one round
            for name, run in runs.items():
                rates[name] = max(rates[name], len(paths) / run())
        for name, rate in rates.items():
            print(f"{name}: {rate:.1f} cells/s", file=sys.stderr, flush=True)
        flops = model_flops(bundle_dir)
        peak = matmul_flops()
        limit = peak / flops
        trained_size = json.loads((Path(source) / "config.json").read_text())["preprocessing"]["input_size"]
        fidelity = int8_fidelity(source, paths, work, args.batch_size) if trained_size != size else \
            _fidelity(work / "onnx.csv", work / "onnx-int8.csv")
        fidelity["input_size"] = trained_size

    base = rates["(a) PyTorch loop, batch 1 (notebook)"]
    print(f"\n{len(paths)} aria_all images at {size} px, model {config.get('model')}, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"model: {flops / 1e9:.3f} GFLOP per image; measured float32 matmul: {peak / 1e9:.1f} GFLOP/s; "
          f"FLOP-bound limit {limit:.0f} cells/s")
    print(f"ONNX export (fp32 + int8 calibration) took {export_s:.1f} s")
    print(f"int8 vs fp32 at the trained size ({fidelity['input_size']} px): same label on "
          f"{fidelity['agreement']:.1%} of the images; accuracy fp32 {fidelity['accuracy_fp32']:.3f}, "
          f"int8 {fidelity['accuracy_int8']:.3f}\n")
    print(f"| {'method':<44} | cells/s | x (a) | % of limit |")
    print(f"|{'-' * 46}|--------:|------:|-----------:|")
    for name, r in rates.items():
        print(f"| {name:<44} | {r:7.1f} | {r / base:5.2f} | {100 * r / limit:9.1f}% |")
    print(f"| {'FLOP-bound limit':<44} | {limit:7.1f} | {limit / base:5.2f} | {100.0:9.1f}% |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "images": len(paths), "input_size": size, "model": config.get("model"), "cores": os.cpu_count(),
        "repeat": args.repeat,
        "cells_per_second": rates, "model_gflop_per_image": flops / 1e9, "matmul_gflops": peak / 1e9,
        "flop_bound_cells_per_second": limit, "int8_vs_fp32": fidelity,
        "load_average_1min": os.getloadavg()[0]}, indent=2) + "\n")
    return 0


def int8_fidelity(source: Path, paths: list[Path], work: Path, batch_size: int) -> dict[str, float]:
    """fp32 vs int8 labels at the size the bundle was trained at (a model run at another size is
    off its training distribution, and its near-tie calls say nothing about quantisation)."""
    from leukoscope.bundle.export import export_onnx
    from leukoscope.predict.local import predict

    native = work / "native"
    shutil.copytree(source, native)
    export_onnx(native, int8=True)
    for runtime in ("onnx", "onnx-int8"):
        predict(load_bundle(native, runtime=runtime), paths, work / f"native-{runtime}.csv",
                batch_size=batch_size)
    return _fidelity(work / "native-onnx.csv", work / "native-onnx-int8.csv")


def _fidelity(fp32_csv: Path, int8_csv: Path) -> dict[str, float]:
    """Label agreement of two prediction CSVs, and each one's accuracy against the class folders."""
    import pandas as pd

    fp32, int8 = pd.read_csv(fp32_csv), pd.read_csv(int8_csv)
    truth = fp32["path"].map(lambda p: Path(p).parent.name).to_numpy()
    return {"agreement": float((fp32["predicted"].to_numpy() == int8["predicted"].to_numpy()).mean()),
            "accuracy_fp32": float((fp32["predicted"].to_numpy() == truth).mean()),
            "accuracy_int8": float((int8["predicted"].to_numpy() == truth).mean())}


if __name__ == "__main__":
    raise SystemExit(main())
