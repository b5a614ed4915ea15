"""Bounded load test of ``leukoscope serve`` on loopback: latency percentiles, throughput, failures.

    python benchmarks/load_test.py [BUNDLE] [--requests 300] [--concurrency 8] [--no-explain]
                                   [--threads 1] [--runtime auto]

Starts the real server in its own process on a free 127.0.0.1 port, sends a fixed number of
single-image ``POST /api/predict`` requests (real cells from the four sample data sets, in turn)
with at most ``--concurrency`` in flight, probes ``/healthz`` meanwhile to show the event loop
stays free, then stops the server. Without BUNDLE it first trains a small leukonet on the real
C-NMC sample. Exits non-zero if any request failed or got a 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from leukoscope.serve.background import serving
from leukoscope.settings import data_root
from machine import quick_bundle


def real_images(root: Path) -> list[tuple[str, bytes]]:
    paths = [next((root / "cnmc_sample" / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all")
                  .glob("*.bmp")),
             next((root / "cnmc_cells" / "hem").glob("*.png")),
             next((root / "aria_all" / "Benign").glob("*.jpg")),
             root / "allidb2" / "Im001_1.tif"]
    return [(p.name, p.read_bytes()) for p in paths]


async def run_load(url: str, images: list[tuple[str, bytes]], n: int, concurrency: int,
                   explain: bool, timeout: float) -> dict[str, float]:
    latencies: list[float] = []
    failures: list[str] = []
    server_errors = 0
    health: list[float] = []
    done = asyncio.Event()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal server_errors
            name, content = images[i % len(images)]
            async with gate:
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"/api/predict?explain={str(explain).lower()}",
                                          files=[("files", (name, content, "application/octet-stream"))])
                except httpx.HTTPError as e:
                    failures.append(f"request {i}: {type(e).__name__}: {e}")
                    return
                latencies.append(time.perf_counter() - t0)
                if r.status_code >= 500:
                    server_errors += 1
                if r.status_code != 200 or r.json()["results"][0]["error"]:
                    failures.append(f"request {i}: HTTP {r.status_code} {r.text[:200]}")

        async def probe() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                r = await client.get("/healthz")
                if r.status_code == 200:
                    health.append(time.perf_counter() - t0)
                await asyncio.sleep(0.25)

        prober = asyncio.create_task(probe())
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
        done.set()
        await prober
    for f in failures[:10]:
        print(f"  failure: {f}", file=sys.stderr)
    lat = np.array(latencies) * 1000
    return {"requests": n, "ok": n - len(failures), "failures": len(failures), "5xx": server_errors,
            "wall_s": wall, "rps": n / wall,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
            "max_ms": float(lat.max()) if len(lat) else float("nan"),
            "healthz_p50_ms": statistics.median(health) * 1000 if health else float("nan"),
            "healthz_max_ms": max(health) * 1000 if health else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", type=Path, help="model bundle (default: train a small leukonet)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-explain", dest="explain", action="store_false",
                    help="skip Grad-CAM / feature contributions")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    ap.add_argument("--threads", type=int, default=1, help="leukoscope serve --threads")
    ap.add_argument("--runtime", default="auto", help="leukoscope serve --runtime")
    args = ap.parse_args()
    images = real_images(data_root())
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or quick_bundle([data_root() / "cnmc_sample"], Path(tmp) / "run",
                                             model="leukonet", epochs=3, img_size=96)
        with serving(bundle, "--threads", str(args.threads), "--runtime", args.runtime) as url:
            # one warm-up request so lazy initialisation is not counted as latency
            httpx.post(f"{url}/api/predict", files=[("files", images[0])], timeout=args.timeout)
            r = asyncio.run(run_load(url, images, args.requests, args.concurrency, args.explain,
                                     args.timeout))
    print(f"load test: {bundle} on {url} (--threads {args.threads} --runtime {args.runtime}), "
          f"{args.requests} requests, {args.concurrency} concurrent, one image each, "
          f"explanations {'on' if args.explain else 'off'}")
    print(f"  ok {r['ok']}/{r['requests']}  failures {r['failures']}  5xx {r['5xx']}")
    print(f"  latency p50 {r['p50_ms']:.1f} ms  p95 {r['p95_ms']:.1f} ms  max {r['max_ms']:.1f} ms")
    print(f"  throughput {r['rps']:.1f} requests/s over {r['wall_s']:.1f} s")
    print(f"  /healthz during load: p50 {r['healthz_p50_ms']:.1f} ms  max {r['healthz_max_ms']:.1f} ms")
    return 0 if r["failures"] == 0 and r["5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
