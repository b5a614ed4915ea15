"""Throughput of the ``deep`` feature kind (frozen EfficientNet-Lite0 embeddings) on this machine.

    python benchmarks/deep_features.py [DATASET] [--size 224] [--n 256] [--batch 32]

Times ``DeepFeatures.compute`` on ``n`` images of DATASET (default aria_all) decoded in advance
(network + preprocessing: what the 60 images/s target is about), then end to end through
``extract`` with a cold cache (decode + network + cache writes). Prints images/s, the CPU time
and the load average (the machine may be shared), and writes benchmarks/results/deep_features.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

TARGET_IMAGES_PER_S = 60.0


def main() -> None:
    from leukoscope.data.images import load_rgb
    from leukoscope.data.readers import read
    from leukoscope.features import extract, get_extractor
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", nargs="?", default="aria_all")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    m = read([data_root() / args.dataset])
    m = m.sample(n=min(args.n, len(m)), random_state=0).reset_index(drop=True)
    images = [load_rgb(p) for p in m["path"]]
    ex = get_extractor("deep", input_size=args.size)
    ex.batch_size = args.batch
    ex.compute(images[: args.batch])  # load the network, warm up oneDNN
    load0 = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    rows = ex.compute(images)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    figures = {"dataset": args.dataset, "images": len(images), "input_size": args.size,
               "batch": args.batch, "cores": os.cpu_count(), "network_images_per_s": len(images) / wall,
               "network_wall_s": wall, "network_cpu_s": cpu,
               # what the cores would give if this process had them to itself (set
               # OMP_WAIT_POLICY=PASSIVE on a shared machine so spinning threads do not inflate cpu_s)
               "cpu_bound_images_per_s": len(images) / cpu * (os.cpu_count() or 1),
               "load_average_before": load0,
               "load_average_after": os.getloadavg()[0], "width": int(rows.shape[1])}
    with tempfile.TemporaryDirectory(prefix="leukoscope-deep-") as tmp:
        t0 = time.perf_counter()
        extract(m, "deep", cache=Path(tmp), input_size=args.size)
        figures["extract_cold_images_per_s"] = len(m) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        extract(m, "deep", cache=Path(tmp), input_size=args.size)
        figures["extract_cached_s"] = time.perf_counter() - t0
    ok = figures["network_images_per_s"] >= TARGET_IMAGES_PER_S
    for k, v in figures.items():
        print(f"{k:>28}: {v:.2f}" if isinstance(v, float) else f"{k:>28}: {v}")
    print(f"target >= {TARGET_IMAGES_PER_S:.0f} images/s at 224 px: {'met' if ok else 'NOT met'}"
          + (" (machine shared: load average above the core count)" if load0 > (os.cpu_count() or 1) else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deep_features.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
