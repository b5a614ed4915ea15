"""Time the classical track on the 4-class set: feature extraction (cold, then cached) and the leaderboard.

    python benchmarks/classical.py [DATASET ...] [--cv 5] [--timeout 300] [--out DIR]

Defaults to ``aria_all`` (1,200 images, 4 classes). The cold run uses an empty cache in a
temporary folder, so nothing from earlier runs helps it; the cached run repeats the same call.
The leaderboard is every registered classical model, 5-fold, on the cached features, exactly as
``leukoscope benchmark`` runs it. Prints the figures against the targets for a 2-core laptop
(cold <= 30 s, cached <= 2 s, whole leaderboard <= 2 min) and writes them as JSON to
benchmarks/results/classical.json (and the leaderboard files beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

TARGETS = {"extract_cold_s": 30.0, "extract_cached_s": 2.0, "leaderboard_s": 120.0}


def cpu_ms_per_image(paths: list[str]) -> float:
    """CPU time of decoding + featurising one image in this process: a figure the machine's other
    load does not inflate (wall-clock figures below are what a user waits, under that load)."""
    from leukoscope.data.images import load_rgb
    from leukoscope.features import get_extractor

    extractor = get_extractor("handcrafted")
    extractor.compute([load_rgb(paths[0])])  # warm imports
    t0 = time.process_time()
    for p in paths:
        extractor.compute([load_rgb(p)])
    return 1000 * (time.process_time() - t0) / len(paths)


def main() -> None:
    from leukoscope.data.readers import read
    from leukoscope.features import extract
    from leukoscope.leaderboard import benchmark, write_leaderboard
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["aria_all"])
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    m = read([data_root() / d for d in args.datasets])
    figures: dict[str, float | int | str] = {"data": ", ".join(args.datasets), "images": len(m),
                                              "cores": os.cpu_count() or 1,
                                              "load_before": os.getloadavg()[0]}
    figures["cpu_ms_per_image"] = cpu_ms_per_image(m["path"].iloc[:: max(1, len(m) // 60)].tolist())
    with tempfile.TemporaryDirectory(prefix="leukoscope-bench-") as tmp:
        cache = Path(tmp)
        t0 = time.perf_counter()
        frame, skipped = extract(m, "handcrafted", cache=cache)
        figures["extract_cold_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        extract(m, "handcrafted", cache=cache)
        figures["extract_cached_s"] = time.perf_counter() - t0
        figures["features"] = frame.shape[1]
        figures["skipped"] = len(skipped)
        t0 = time.perf_counter()
        lb, _, _ = benchmark(m, k=args.cv, timeout=args.timeout, cache=cache)
        figures["leaderboard_s"] = time.perf_counter() - t0
    figures["load_after"] = os.getloadavg()[0]
    write_leaderboard(lb, args.out / "classical-leaderboard")
    ok = lb.table[lb.table["status"] == "ok"]
    best = ok.iloc[0]
    figures["leaderboard_cpu_s"] = float(lb.table["cpu_s"].sum())
    figures |= {"models": len(lb.table), "models_ok": len(ok), "protocol": lb.protocol,
                "best_model": lb.best or "-",
                "best_balanced_accuracy": float(best["balanced_accuracy_mean"]),
                "best_macro_f1": float(ok["f1_macro_mean"].max()),
                "best_macro_f1_model": str(ok.loc[ok["f1_macro_mean"].idxmax(), "model"])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classical.json").write_text(json.dumps(figures, indent=2) + "\n")

    print(f"classical track on {figures['data']}: {figures['images']} images, {figures['features']} "
          f"handcrafted features, {figures['cores']} cores, {figures['skipped']} skipped")
    for key, target in TARGETS.items():
        value = float(figures[key])
        verdict = "ok" if value <= target else "OVER TARGET"
        print(f"  {key:<18} {value:8.2f} s   (target <= {target:g} s: {verdict})")
    print(f"  per image, cold    {1000 * float(figures['extract_cold_s']) / len(m):8.1f} ms wall "
          f"({figures['cores']} cores); {float(figures['cpu_ms_per_image']):.1f} ms CPU on one core")
    print(f"  leaderboard CPU    {float(figures['leaderboard_cpu_s']):8.2f} s in the models' workers "
          f"(about {float(figures['leaderboard_cpu_s']) / int(figures['cores']):.1f} s of wall on "
          f"{figures['cores']} idle cores, plus start-up)")
    print(f"  machine load (1-min average) before {float(figures['load_before']):.1f}, after "
          f"{float(figures['load_after']):.1f}: above {figures['cores']} means other work shared the cores")
    print(f"  leaderboard: {figures['models_ok']}/{figures['models']} models ok, {lb.folds}-fold "
          f"{lb.protocol}; best {figures['best_model']} balanced accuracy "
          f"{figures['best_balanced_accuracy']:.3f}; best macro-F1 {figures['best_macro_f1']:.3f} "
          f"({figures['best_macro_f1_model']})")
    print(lb.table[["model", "balanced_accuracy_mean", "f1_macro_mean", "fit_s_mean", "status"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
