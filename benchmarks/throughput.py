"""Cells per second as a user meets them: `leukoscope predict` against the script a user would write.

    python benchmarks/throughput.py [--bundle DIR] [--images 800] [--sizes 224] [--repeat 3]
                                    [--update-readme]

At the bundle's own (trained) input size, and at each ``--sizes`` as further rows (the networks
are fully convolutional: a copy of the bundle is set to that size and exported, no retraining):

- **whole process**: a fresh interpreter per run, start-up included, on ``--images`` aria_all
  images and on 8: ``benchmarks/plain_script.py`` (what a user would write: PIL, numpy, ONNX
  Runtime with 2 threads in batches of 32, CSV out) and the ``leukoscope predict`` command with
  ONNX Runtime fp32 and int8;
- **steady state**: in one process after a warm-up (start-up not counted): ``leukoscope.predict``
  with ONNX fp32 and int8, and at the trained size a PyTorch loop at batch 1 as notebooks write it.

Every figure is end to end from files in the page cache (decode, resize, model, CSV except the
notebook loop), on the same images, leukoscope byte-compiled as an installed package is; methods
interleaved, each its best of ``--repeat`` rounds, so a burst of other work on a shared machine
hits one round of one method. The 1-minute load average is recorded with every round. int8
against fp32: label agreement and accuracy (class folders) at the trained size. The FLOP-bound
limit is the measured float32 matmul rate over the model's FLOPs.

Without ``--bundle`` it trains a quick EfficientNet-Lite0 at 128 px (speed does not depend on how
well it is trained; int8 agreement does a little). Results go to benchmarks/results/throughput.json;
``--update-readme`` rewrites the README's Throughput subsection from them (``readme.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.data.images import iter_image_files
from leukoscope.settings import data_root
from machine import byte_compile_leukoscope, hardware, quick_bundle, warm_page_cache
from readme import FP32, INT8, PLAIN, STEADY, WHOLE, throughput_table, update_throughput

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "throughput.json"
SMALL = 8


def evenly(paths: list[Path], n: int) -> list[Path]:
    idx = np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)
    return [paths[i] for i in idx]


def leukoscope_command() -> list[str]:
    """The ``leukoscope`` console script of this interpreter (what a user types)."""
    script = Path(sys.executable).with_name("leukoscope")
    here = [sys.executable, "-c", "from leukoscope.cli import main; main()"]
    return [str(script)] if script.is_file() else here


def timed(cmd: list[str]) -> float:
    """Wall seconds of a whole process; it must succeed."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def whole_process(bundle: Path, paths: list[Path], out: Path, method: str) -> float:
    """Seconds of one fresh process predicting ``paths`` into ``out``."""
    files = [str(p) for p in paths]
    if method == "plain":
        return timed([sys.executable, str(HERE / "plain_script.py"), str(bundle), str(out), *files])
    return timed([*leukoscope_command(), "predict", str(bundle), *files, "--out", str(out),
                  "--runtime", method, "--restart"])


def notebook_loop(bundle_dir: Path, paths: list[Path]) -> Callable[[], float]:
    """A PyTorch loop at batch 1 (PIL open, resize, tensor, model), as tutorials write it."""
    import torch
    from PIL import Image

    from leukoscope.bundle import load_bundle

    bundle: Any = load_bundle(bundle_dir, runtime="torch")
    model = bundle.module.eval().to(memory_format=torch.contiguous_format)
    pre = bundle.config["preprocessing"]
    size = pre["input_size"]
    mean = torch.tensor(pre["mean"]).view(3, 1, 1)
    std = torch.tensor(pre["std"]).view(3, 1, 1)

    def run(ps: list[Path]) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for p in ps:
                img = Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
                model(((x - mean) / std).unsqueeze(0)).softmax(dim=1)
        return time.perf_counter() - t

    run(paths[:8])
    return lambda: run(paths)


def steady_predict(bundle_dir: Path, runtime: str, paths: list[Path], work: Path) -> Callable[[], float]:
    """``leukoscope.predict.local.predict`` in this process, the bundle loaded and warmed up once."""
    from leukoscope.bundle import load_bundle
    from leukoscope.predict.local import predict

    bundle = load_bundle(bundle_dir, runtime=runtime)
    predict(bundle, paths[:64], work / f"warm-{runtime}.csv")

    def run() -> float:
        t = time.perf_counter()
        summary = predict(bundle, paths, work / f"steady-{runtime}.csv", restart=True)
        assert summary.predicted == len(paths), summary.skipped
        return time.perf_counter() - t

    return run


def prepare_bundle(source: Path, size: int, work: Path) -> Path:
    """A copy of ``source`` at input ``size``, exported to ONNX fp32 and int8."""
    from leukoscope.bundle.export import export_onnx

    target = work / f"bundle-{size}"
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["input_size"] = config["preprocessing"]["input_size"] = size
    (target / "config.json").write_text(json.dumps(config))
    export_onnx(target, int8=True)
    return target


def fidelity(fp32_csv: Path, int8_csv: Path) -> dict[str, float]:
    """Label agreement of two prediction CSVs, and each one's accuracy against the class folders."""
    import pandas as pd

    fp32, int8 = pd.read_csv(fp32_csv), pd.read_csv(int8_csv)
    label = "predicted" if "predicted" in fp32 else "label"
    a, b = fp32[label].to_numpy(), int8[label].to_numpy()
    truth = fp32["path"].map(lambda p: Path(p).parent.name).to_numpy()
    return {"images": len(fp32), "agreement": float((a == b).mean()),
            "accuracy_fp32": float((a == truth).mean()), "accuracy_int8": float((b == truth).mean())}


def model_flops(bundle_dir: Path) -> float:
    """FLOPs of one forward pass for one image at the bundle's input size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from leukoscope.bundle import load_bundle

    bundle: Any = load_bundle(bundle_dir, runtime="torch")
    size = bundle.config["preprocessing"]["input_size"]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        bundle.module(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def matmul_flops(n: int = 2048, repeat: int = 10) -> float:
    """Measured float32 matmul FLOP/s on all cores (best of ``repeat``)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="An efficientnet_lite0 bundle (default: train a quick one).")
    ap.add_argument("--images", type=int, default=800, help="Number of aria_all images (evenly spaced).")
    ap.add_argument("--sizes", type=int, nargs="*", default=[224], help="Input sizes measured besides the "
                    "bundle's own (rows of their own).")
    ap.add_argument("--repeat", type=int, default=3, help="Rounds; each method's best round counts.")
    ap.add_argument("--no-torch", action="store_true", help="Leave out the PyTorch rows (slow).")
    ap.add_argument("--update-readme", action="store_true",
                    help="Rewrite the README's Throughput subsection.")
    args = ap.parse_args(argv)

    paths = evenly(list(iter_image_files(data_root() / "aria_all")), args.images)
    warm_page_cache(paths)  # every method reads from memory
    byte_compile_leukoscope()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="leukoscope-throughput-") as tmp:
        work = Path(tmp)
        source = args.bundle or quick_bundle([data_root() / "aria_all"], work / "trained",
                                             model="efficientnet_lite0", img_size=128, epochs=2, seed=0)
        trained = int(json.loads((Path(source) / "config.json").read_text())["preprocessing"]["input_size"])
        sizes = [trained, *(s for s in args.sizes if s != trained)]
        bundles = {size: prepare_bundle(Path(source), size, work) for size in sizes}
        runs: dict[tuple[str, str, int, int], Callable[[], float]] = {}
        for size, b in bundles.items():
            for n in (len(paths), SMALL):
                for method, name in (("plain", PLAIN), ("onnx", FP32),
                                     ("onnx-int8", INT8)):
                    out = work / f"{method}-{size}-{n}.csv"
                    runs[(name, WHOLE, size, n)] = (lambda b=b, n=n, out=out, method=method:
                                                    whole_process(b, paths[:n], out, method))
            steady = [("onnx", FP32), ("onnx-int8", INT8)]
            if not args.no_torch and size == trained:  # PyTorch is slow: at the trained size only
                runs[("PyTorch loop, batch 1 (notebook)", STEADY, size, len(paths))] = notebook_loop(b, paths)
            (work / f"{size}").mkdir()
            for runtime, name in steady:
                runs[(name, STEADY, size, len(paths))] = steady_predict(b, runtime, paths, work / f"{size}")
        best = {key: float("inf") for key in runs}
        loads: list[str] = []
        for r in range(args.repeat):  # interleaved: a burst of other work hits one round of one method
            loads.append(Path("/proc/loadavg").read_text().split(" ", 3)[0] if Path("/proc/loadavg").exists()
                         else f"{os.getloadavg()[0]:.2f}")
            for key, run in runs.items():
                best[key] = min(best[key], run())
            print(f"round {r + 1}/{args.repeat} done (load {loads[-1]})", file=sys.stderr, flush=True)
        n = len(paths)
        fid = fidelity(work / f"onnx-{trained}-{n}.csv", work / f"onnx-int8-{trained}-{n}.csv")
        fid["input_size"] = trained
        limits = {size: matmul_flops() / model_flops(b) for size, b in bundles.items()}

    for (name, measure, size, n), seconds in best.items():
        rows.append({"method": name, "measure": measure, "input_size": size, "images": n, "seconds": seconds,
                     "cells_per_s": n / seconds})
    rows.sort(key=lambda r: (r["input_size"] != trained, r["input_size"], r["measure"] != WHOLE,
                             -r["images"]))
    result = {"images": len(paths), "small": SMALL, "trained_size": trained, "sizes": sizes,
              "model": "efficientnet_lite0", "cores": os.cpu_count(), "hardware": hardware(),
              "repeat": args.repeat, "rows": rows, "int8_vs_fp32": fid,
              "flop_bound_cells_per_second": {str(k): v for k, v in limits.items()},
              "load_average_1min": loads}
    print(report(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.update_readme:
        update_throughput(result)
    return 0


def report(result: dict[str, Any]) -> str:
    """The README's subsection (rows, ratios, int8 agreement) and the loads, as text."""
    return f"{throughput_table(result)}\nloads {result['load_average_1min']}"


if __name__ == "__main__":
    raise SystemExit(main())
