"""Time ``leukoscope tune --model svc --trials 40`` on ALL-IDB2 and compare it with the default SVC.

    python benchmarks/tune_svc.py [--trials 40] [--seed 0] [--dataset allidb2] [--fresh-cache]

A fresh study in a temporary folder every time (the feature cache is reused unless --fresh-cache,
which times the feature extraction too). Prints wall time (target: under 5 minutes on 2 cores),
CPU time, the load average (other work on the machine slows the wall time), the CV score of the
best trial and of the defaults, and both held-out test figures; writes them as JSON to
benchmarks/results/tune_svc-seed<SEED>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from machine import cpu_seconds

TARGET_S = 300.0


def main() -> None:
    import optuna

    from leukoscope.data.readers import read
    from leukoscope.settings import data_root
    from leukoscope.tune import TuneSettings, tune

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="allidb2")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh-cache", action="store_true")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache" if args.fresh_cache else None
        t0, c0 = time.perf_counter(), cpu_seconds()
        m = read([data_root() / args.dataset])
        result = tune(m, TuneSettings(model="svc", seed=args.seed), Path(tmp) / "study", n_trials=args.trials,
                      cache=cache)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    figures = {
        "dataset": args.dataset, "trials": result.counts, "seed": args.seed, "protocol": result.protocol,
        "split": result.split, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "load_average": os.getloadavg(), "fresh_feature_cache": args.fresh_cache,
        "best": {"trial": result.best["trial"], "params": result.best["params"], "cv": result.best["cv"],
                 "search_best": result.best["search_best"],
                 "test": result.best["test"]},
        "default": {"cv": result.default["cv"], "test": result.default["test"]},
    }
    out = Path(__file__).parent / "results" / f"tune_svc-seed{args.seed}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=float))
    b, d = result.best, result.default
    print(f"tune svc on {args.dataset} ({result.protocol}, seed {args.seed}): {args.trials} trials "
          f"({result.counts['complete']} complete, {result.counts['pruned']} pruned) in {wall:.0f} s wall "
          f"(target {TARGET_S:.0f} s), {cpu:.0f} s CPU, load average {os.getloadavg()[0]:.1f}")
    print(f"  CV balanced accuracy (train side, 5-fold): best {b['cv']:.4f} (trial {b['trial']}), "
          f"defaults {d['cv']:.4f}")
    print(f"  held-out test ({result.split['test']} images) balanced accuracy: "
          f"best {b['test']['balanced_accuracy']:.4f}, "
          f"defaults {d['test']['balanced_accuracy']:.4f}; accuracy best {b['test']['accuracy']:.4f}, "
          f"defaults {d['test']['accuracy']:.4f}")
    top = b["search_best"]
    chosen = "defaults" if b["trial"] is None else "the trial"
    print(f"  search's top trial {top['trial']}: CV {top['cv']:.4f}, paired per-fold change over the "
          f"defaults {top['mean']:+.4f} +- {top['se']:.4f} (chosen: {chosen})")
    print(f"  best parameters: {b['params']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
