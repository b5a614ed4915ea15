"""Time the data audit (exact + near duplicates, no embeddings) on the 1,200-image 4-class set.

    python benchmarks/audit.py [DATASET ...] [--n-jobs 2] [--embeddings]

Defaults to ``aria_all``. Prints wall time (target: under 30 s on a 2-core laptop), the CPU time
(all of it with ``--n-jobs 1``), the machine's load average (other work on the machine slows the
wall time) and what the audit found; writes the figures as JSON to benchmarks/results/audit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from machine import cpu_seconds

TARGET_S = 30.0


def main() -> None:
    from leukoscope.audit import audit
    from leukoscope.data.readers import read
    from leukoscope.features import extract
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["aria_all"])
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--embeddings", action="store_true")
    args = ap.parse_args()

    m = read([data_root() / d for d in args.datasets])
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), cpu_seconds()
    vectors = extract(m, "deep", n_jobs=args.n_jobs)[0] if args.embeddings else None
    result = audit(m, n_jobs=args.n_jobs, embeddings=vectors)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    info = result.summary()
    figures = {"datasets": args.datasets, "images": info["images"], "n_jobs": args.n_jobs,
               "embeddings": args.embeddings, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
               "load_avg_1min_before": round(load_before, 2), "target_s": TARGET_S,
               "pairs": info["pairs"], "clusters": info["clusters"]}
    print(f"audit of {info['images']} images ({', '.join(args.datasets)}), n_jobs={args.n_jobs}, "
          f"embeddings={args.embeddings}: {wall:.1f} s wall "
          f"({'within' if wall < TARGET_S else 'OVER'} the {TARGET_S:.0f} s target), "
          f"{cpu:.1f} s CPU{' (workers still alive are not counted)' if args.n_jobs != 1 else ''}; "
          f"load average before: {load_before:.1f}")
    print(f"found: {info['pairs']} in {info['clusters']} clusters")
    out = Path(__file__).parent / "results" / "audit.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
