"""Ray's overhead on one machine: the same 20,000 synthetic cells predicted by the local and the Ray engine.

    python benchmarks/ray_throughput.py [--images 20000] [--size 96] [--model leukonet] [--img-size 96]
                                        [--rounds 2] [--num-cpus N] [--batch-size 64] [--scaling]

Both engines run the same exported ONNX model end to end from files on disk (expand inputs, decode,
preprocess, model, write the output), on the same images, with the page cache warmed first. The rounds
alternate local, Ray, local, Ray..., so load from other work on the machine hits both alike; each
engine's figure is its best round. Ray runs on one local instance started before the first round
(its start-up is timed and reported separately, as on a cluster that is already up); each Ray round
still pays for creating its actors and shipping the bundle to them. Overhead = local images/s over
Ray images/s, minus 1 (target: at most 25%). Ray normally runs its workers at nice 15; here they run
at the local engine's priority (``RAY_worker_niceness=0``), so on a machine shared with other work the
figure measures Ray, not who wins the CPU.

The cells (SYNTHETIC, ``leukoscope.data.synthetic``) and the quickly trained bundle are made once into
the git-ignored ``.cache/benchmarks/`` folder; a bundle's speed does not depend on how well it learned.
Results also go to benchmarks/results/ray_throughput.json.

``--scaling`` instead runs Ray alone with 1, 2, ... actors (one per CPU of this machine) and prints, for
each, when the first results came back and the steady rate after that: how throughput grows with workers
once the fixed start-up is paid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from leukoscope.bundle import Bundle, load_bundle
from leukoscope.data.images import iter_image_files
from leukoscope.data.synthetic import make_synthetic
from leukoscope.predict import local, ray_engine
from leukoscope.predict.local import PredictSummary
from leukoscope.progress import Counting
from machine import quick_bundle, warm_page_cache

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "benchmarks"
RESULTS = ROOT / "benchmarks" / "results" / "ray_throughput.json"
TARGET_OVERHEAD = 0.25
PER_SUBJECT = 200


def cells(n: int, size: int) -> Path:
    """``n`` synthetic cells (two classes, ``PER_SUBJECT`` per subject), made once."""
    folder = CACHE / f"cells-{n}-{size}px"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"writing {n} synthetic cells to {folder} (once)...", flush=True)
        make_synthetic(folder, n_subjects=n // PER_SUBJECT, per_subject=PER_SUBJECT, n_classes=2, size=size,
                       seed=0)
        (folder / ".complete").touch()
    return folder


def bundle(model: str, img_size: int) -> Path:
    """A network bundle trained for one epoch on a few synthetic subjects, exported to ONNX; made once."""
    from leukoscope.bundle.export import export_onnx

    run = CACHE / f"bundle-{model}-{img_size}"
    if not (run / "bundle" / "model.onnx").exists():
        print(f"training a quick {model} bundle in {run} (once)...", flush=True)
        data = make_synthetic(CACHE / "train-cells", n_subjects=8, per_subject=12, size=96, seed=1)
        export_onnx(quick_bundle([data], run, model=model, img_size=img_size, epochs=1, batch_size=16,
                                 seed=0))
    return run / "bundle"


def timed_ray(b: Bundle, folder: Path, out: Path, batch_size: int) -> tuple[PredictSummary, float, float]:
    """A Ray run, with the seconds until its first results and the images/s from then to the end."""
    marks: list[tuple[float, int]] = []
    t = time.perf_counter()
    s = ray_engine.predict(b, [folder], out, batch_size,
                           progress=Counting(lambda done, _: marks.append((time.perf_counter() - t, done))))
    (t0, d0), (t1, d1) = next(m for m in marks if m[1] > 0), marks[-1]
    return s, t0, (d1 - d0) / (t1 - t0) if t1 > t0 else float("nan")


def scaling(b: Bundle, folder: Path, batch_size: int) -> None:
    for n in range(1, (os.cpu_count() or 1) + 1):
        with ray_engine.ray_session(num_cpus=n), tempfile.TemporaryDirectory() as tmp:
            s, first, steady = timed_ray(b, folder, Path(tmp), batch_size)
        print(f"{n} actor(s): {s.predicted / s.seconds:.1f} images/s end to end ({s.seconds:.1f} s); first "
              f"results after {first:.1f} s, then {steady:.1f} images/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=96, help="pixel size of the synthetic cells")
    ap.add_argument("--model", default="leukonet")
    ap.add_argument("--img-size", type=int, default=96, help="the network's input size")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--num-cpus", type=int, default=None, help="the local Ray instance (default: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scaling", action="store_true", help="Ray alone with 1..all CPUs")
    args = ap.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")

    folder, bundle_dir = cells(args.images, args.size), bundle(args.model, args.img_size)
    n = warm_page_cache(iter_image_files(folder))
    b = load_bundle(bundle_dir)
    print(f"{n} cells of {args.size} px, {args.model} at {args.img_size} px ({type(b).__name__}), "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs", flush=True)
    if args.scaling:
        scaling(b, folder, args.batch_size)
        return
    t0 = time.perf_counter()
    figures: dict[str, list[float]] = {"local": [], "ray": []}
    with ray_engine.ray_session(num_cpus=args.num_cpus) as ray, tempfile.TemporaryDirectory() as tmp:
        startup = time.perf_counter() - t0
        cpus = int(ray.cluster_resources().get("CPU", 0))
        print(f"Ray started in {startup:.1f} s ({cpus} CPUs)", flush=True)
        runs = {"local": lambda: local.predict(b, [folder], Path(tmp) / "local.csv", args.batch_size),
                "ray": lambda: ray_engine.predict(b, [folder], Path(tmp) / "ray", args.batch_size)}
        for r in range(args.rounds):
            for engine, run in runs.items():
                s = run()
                assert s.predicted == n and not s.skipped, s
                figures[engine].append(n / s.seconds)
                print(f"round {r + 1}: {engine:5s} {n / s.seconds:7.1f} images/s ({s.seconds:.1f} s)",
                      flush=True)
    local_ips, ray_ips = max(figures["local"]), max(figures["ray"])
    overhead = local_ips / ray_ips - 1
    with_startup = n / (n / ray_ips + startup)
    result = {"images": n, "cell_px": args.size, "model": args.model, "input_px": args.img_size,
              "batch_size": args.batch_size, "cpus": os.cpu_count(), "ray_cpus": cpus,
              "machine": platform.processor() or platform.machine(), "rounds": figures,
              "local_images_per_s": local_ips, "ray_images_per_s": ray_ips, "ray_startup_s": startup,
              "ray_overhead": overhead, "ray_images_per_s_with_startup": with_startup,
              "ray_overhead_with_startup": local_ips / with_startup - 1, "target_overhead": TARGET_OVERHEAD,
              "load_average_1m": os.getloadavg()[0]}
    print(f"local {local_ips:.1f} images/s | ray {ray_ips:.1f} images/s | Ray overhead {overhead:+.1%} "
          f"(target <= {TARGET_OVERHEAD:.0%}: {'met' if overhead <= TARGET_OVERHEAD else 'NOT met'}) | "
          f"counting Ray's {startup:.1f} s start-up once: {with_startup:.1f} images/s, "
          f"{result['ray_overhead_with_startup']:+.1%}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
