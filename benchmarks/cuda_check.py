"""Check and time leukoscope's training on a GPU: a real run on cuda, one epoch cuda vs cpu, and the
CUDA-trained bundle loaded and used on the CPU.

    python benchmarks/cuda_check.py --data .devdata/aria_all --out OUT [--img-size 128] [--epochs 2]

Trains ``efficientnet_lite0`` (pretrained, fine-tuned) through ``leukoscope.train.train`` twice with
the same settings and data, once with ``device="cuda"`` and once with ``device="cpu"`` (all cores);
an epoch's time is leukoscope's own ``history.csv`` ``seconds`` (one training pass plus the
validation pass); the table shows every epoch, the first on cuda including its warm-up. Then the
cuda run's bundle is loaded in a child process that sees no GPU (``CUDA_VISIBLE_DEVICES=``) and
predicts the test side; its accuracy must match the one measured on the GPU at training time.
Writes ``cuda_check.json`` into ``--out``. Without a GPU only the cpu half runs; a note says so
and the exit status is 0. See benchmarks/cuda_check.sh for preparing the data and wheels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Test-side accuracy on the CPU vs on the GPU at training time: a cell or two may flip (float
#: arithmetic differs between the devices), a broken bundle would be far off.
ACCURACY_TOLERANCE = 0.02

_PREDICT_ON_CPU = """
import json, sys
import numpy as np, torch
from leukoscope.bundle import load_bundle
assert not torch.cuda.is_available()
b = load_bundle(sys.argv[1], runtime="torch")
split = b.split()
test = split[split["side"] == "test"]
pred = b.predict_proba(list(test["path"])).argmax(1)
truth = np.array([b.classes.index(c) for c in test["label"]])
print(json.dumps({"cells": int(len(test)), "accuracy": float((pred == truth).mean()),
                  "trained_on": b.config.get("trained_on")}))
"""


def run(data: Path, out: Path, device: str, args: argparse.Namespace) -> dict[str, Any]:
    """One leukoscope training run on ``device``; its per-epoch times and figures."""
    import pandas as pd
    import torch

    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    cfg = TrainConfig.build(model="efficientnet_lite0", img_size=args.img_size, epochs=args.epochs,
                            patience=args.epochs, batch_size=args.batch_size, seed=0, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    bundle = train(read([data]), cfg, out / f"run-{device}")
    wall = time.perf_counter() - t0
    history = pd.read_csv(out / f"run-{device}" / "history.csv")
    split = bundle.split()
    n_train, n_val = (int((split["side"] == s).sum()) for s in ("train", "val"))
    metrics = bundle.metrics()
    result = {"device": device, "trained_on": bundle.config.get("trained_on"), "train_cells": n_train,
              "val_cells": n_val, "test_cells": int((split["side"] == "test").sum()),
              "epoch_seconds": [float(s) for s in history["seconds"]],
              "train_cells_per_s": [n_train / float(s) for s in history["seconds"]],
              "val_balanced_accuracy": [float(v) for v in history["val_balanced_accuracy"]],
              "test_accuracy": metrics.get("test", {}).get("accuracy"), "run_wall_s": wall,
              "bundle": str(bundle.path)}
    if device == "cuda":
        result["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def predict_on_cpu(bundle: str) -> dict[str, Any]:
    """The bundle used by a process that cannot see the GPU (as on a user's laptop)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _PREDICT_ON_CPU, bundle], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the cuda bundle did not load / predict on the cpu:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(runs: list[dict[str, Any]]) -> str:
    lines = [f"{'device':<6} {'epoch':>5} {'seconds':>8} {'cells/s':>8} {'val bal.acc':>11}"]
    for r in runs:
        for i, (s, c, v) in enumerate(zip(r["epoch_seconds"], r["train_cells_per_s"],
                                          r["val_balanced_accuracy"], strict=True)):
            lines.append(f"{r['device']:<6} {i + 1:>5} {s:>8.2f} {c:>8.1f} {v:>11.3f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder leukoscope reads (class folders)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="epoch 1 on cuda includes its warm-up")
    ap.add_argument("--skip-cpu", action="store_true", help="cuda half only")
    args = ap.parse_args()
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
        "load_average": os.getloadavg(), "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None, "img_size": args.img_size,
        "batch_size": args.batch_size, "epochs": args.epochs, "data": str(args.data)}
    print(" ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    runs: list[dict[str, Any]] = []
    if cuda:
        runs.append(run(args.data, args.out, "cuda", args))
        print(f"cuda run: trained_on={runs[-1]['trained_on']!r}, test accuracy {runs[-1]['test_accuracy']}",
              flush=True)
        info["cpu_check"] = predict_on_cpu(runs[-1]["bundle"])
        print(f"cuda bundle on a process without a GPU: {info['cpu_check']}", flush=True)
    if not args.skip_cpu:
        runs.append(run(args.data, args.out, "cpu", args))
    info["runs"] = runs
    print(table(runs))
    (args.out / "cuda_check.json").write_text(json.dumps(info, indent=2))
    print(f"wrote {args.out / 'cuda_check.json'}")
    if not cuda:
        print("note: torch sees no CUDA device here: only the cpu half ran")
        return 0
    check = info["cpu_check"]
    if not str(check["trained_on"]).startswith("cuda"):
        print(f"FAIL: the bundle records trained_on={check['trained_on']!r}")
        return 1
    if abs(check["accuracy"] - runs[0]["test_accuracy"]) > ACCURACY_TOLERANCE:
        print(f"FAIL: test accuracy on the cpu {check['accuracy']:.4f} vs on the gpu "
              f"{runs[0]['test_accuracy']:.4f}")
        return 1
    if len(runs) == 2:
        c, g = runs[1]["epoch_seconds"][-1], runs[0]["epoch_seconds"][-1]
        print(f"last epoch: cuda {g:.2f} s vs cpu {c:.2f} s ({c / g:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
