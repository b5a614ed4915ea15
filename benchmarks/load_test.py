"""Load and attack test of ``leukoscope serve`` on loopback: latency, throughput, memory, refusals.

    python benchmarks/load_test.py [BUNDLE] [--requests 300] [--concurrency 8] [--no-explain]
                                   [--threads 1] [--runtime auto] [--phases good,attack]
                                   [--flood 48] [--bombs 4]

Each phase starts the real server in its own process on a free 127.0.0.1 port, with its default
limits, and reports the server's peak resident memory (VmHWM) at the end.

- good: a fixed number of single-image ``POST /api/predict`` requests (real cells from the four
  sample data sets, in turn) with at most ``--concurrency`` in flight;
- attack: all at once, ``--bombs`` clients each sending 16 flat 4000x4000 PNGs in one request
  (0.75 MB that would decode to 768 MB), two sending 300 MB bodies with Content-Length and two
  streaming 300 MB without one, ``--flood`` clients sending one good cell each (more than the
  server's places and queue), and two, 0.3 s ahead of the rest, sending the most pixels a request
  may have (two flat 4000x4000 PNGs) to show what the dearest admitted request costs.

Both probe ``/healthz`` every 50 ms to show the event loop stays free. Without BUNDLE it first
trains a small leukonet on the real C-NMC sample. Exits non-zero on a 5xx, a failed good request,
a hostile request that was not refused (4xx or 503), or a peak over 1.5 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from leukoscope.serve.background import serving
from leukoscope.serve.limits import ServeSettings
from leukoscope.settings import data_root
from machine import load_average, quick_bundle

PEAK_LIMIT = 1.5 * 2**30
BIG_BODY = 300 * 2**20
MiB = 2**20


def real_images(root: Path) -> list[tuple[str, bytes]]:
    paths = [next((root / "cnmc_sample" / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all")
                  .glob("*.bmp")),
             next((root / "cnmc_cells" / "hem").glob("*.png")),
             next((root / "aria_all" / "Benign").glob("*.jpg")),
             root / "allidb2" / "Im001_1.tif"]
    return [(p.name, p.read_bytes()) for p in paths]


def flat_png(side: int) -> bytes:
    """A black side x side PNG: a few kB to send, side * side * 3 bytes decoded."""
    out = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def ms_stats(seconds: list[float], name: str) -> dict[str, float]:
    """p50 / p99 / max of ``seconds`` in milliseconds, keyed ``{name}_p50_ms`` and so on."""
    lat = np.array(seconds) * 1000 if seconds else np.array([np.nan])
    return {f"{name}_p50_ms": float(np.percentile(lat, 50)), f"{name}_p95_ms": float(np.percentile(lat, 95)),
            f"{name}_p99_ms": float(np.percentile(lat, 99)), f"{name}_max_ms": float(lat.max())}


_PROBE = """
import http.client, sys, time
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=30)
while True:
    t0 = time.perf_counter()
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    r.read()
    print(f"{time.perf_counter() - t0:.6f}" if r.status == 200 else "failed", flush=True)
    time.sleep(0.05)
"""


async def with_health_probe(url: str, work: Awaitable[None]) -> tuple[float, list[float]]:
    """Run ``work`` while timing ``GET /healthz`` every 50 ms, on a kept-alive connection, from a
    process of its own: the load's client (its event loop, the GIL) must not count as server time."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    probe = subprocess.Popen([sys.executable, "-c", _PROBE, host, port], stdout=subprocess.PIPE, text=True)
    try:
        await asyncio.sleep(0.5)  # the probe is connected and timing before the work starts
        start = time.perf_counter()
        await work
        wall = time.perf_counter() - start
    finally:
        probe.terminate()
        out = probe.communicate()[0].split()
    if "failed" in out:
        print(f"  /healthz failed {out.count('failed')} times", file=sys.stderr)
    return wall, [float(x) for x in out if x != "failed"]


async def run_load(url: str, images: list[tuple[str, bytes]], n: int, concurrency: int,
                   explain: bool, timeout: float) -> dict[str, float]:
    latencies: list[float] = []
    failures: list[str] = []
    server_errors = 0
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
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

        async def load() -> None:
            await asyncio.gather(*(one(i) for i in range(n)))

        wall, health = await with_health_probe(url, load())
    for f in failures[:10]:
        print(f"  failure: {f}", file=sys.stderr)
    return {"requests": n, "ok": n - len(failures), "failures": len(failures), "5xx": server_errors,
            "wall_s": wall, "rps": n / wall, **ms_stats(latencies, "latency"), **ms_stats(health, "healthz")}


def big_body(head: bytes, total: int) -> Iterator[bytes]:
    """A multipart file part of ``total`` zero bytes, made as it is sent."""
    yield head
    block = bytes(MiB)
    for _ in range(total // MiB):
        yield block


async def run_attack(url: str, cell: tuple[str, bytes], flood: int, bombs: int,
                     timeout: float) -> tuple[dict[str, Counter[str]], float, list[float]]:
    """Every kind of hostile request at once: the answers (status or error) per kind, the wall time
    and the /healthz latencies meanwhile."""
    flat = flat_png(4000)
    answers: dict[str, Counter[str]] = {k: Counter() for k in (
        "16 flat 4000x4000 PNGs", "300 MB, Content-Length", "300 MB, streamed", "flood of good cells",
        "2 flat 4000x4000 PNGs (at the budget)")}
    boundary = "leukoscope-load-test"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}"}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        def record(kind: str, r: httpx.Response) -> None:
            missing = r.status_code == 503 and not r.headers.get("retry-after", "").isdigit()
            answers[kind][f"{r.status_code}{' without Retry-After' if missing else ''}"] += 1

        async def send(kind: str, **request: object) -> None:
            try:
                record(kind, await client.post("/api/predict", **request))  # type: ignore[arg-type]
            except httpx.HTTPError as e:
                answers[kind][type(e).__name__] += 1

        def send_big(kind: str, headers: dict[str, str]) -> None:
            """In a thread, with the blocking client: when the server answers and hangs up while it is
            still sending, it reads the answer; asyncio clients lose it to the reset."""
            try:
                with httpx.Client(base_url=url, timeout=timeout) as big:
                    record(kind, big.post("/api/predict", content=big_body(head, BIG_BODY), headers=headers))
            except httpx.HTTPError as e:
                answers[kind][type(e).__name__] += 1

        def files(n: int, content: bytes) -> dict[str, object]:
            return {"files": [("files", (f"f{i}.png", content, "image/png")) for i in range(n)]}

        budget = [send("2 flat 4000x4000 PNGs (at the budget)", **files(2, flat)) for _ in range(2)]
        attack = [send("16 flat 4000x4000 PNGs", **files(16, flat)) for _ in range(bombs)]
        attack += [asyncio.to_thread(send_big, "300 MB, Content-Length",
                                     {**multipart, "content-length": str(len(head) + BIG_BODY)})
                   for _ in range(2)]
        attack += [asyncio.to_thread(send_big, "300 MB, streamed", multipart) for _ in range(2)]
        attack += [send("flood of good cells", files=[("files", cell)]) for _ in range(flood)]

        async def all_at_once() -> None:
            first = asyncio.gather(*budget)  # a head start, so that they take the places
            await asyncio.sleep(0.3)
            await asyncio.gather(first, *attack)

        wall, health = await with_health_probe(url, all_at_once())
    return answers, wall, health


def attack_refused(answers: dict[str, Counter[str]]) -> bool:
    """True when every hostile request was refused (4xx, or 503 with Retry-After) and every good or
    at-the-budget one was answered (200, or 503 with Retry-After): no 5xx, no dropped connection."""
    for kind, seen in answers.items():
        good = kind.startswith(("flood", "2 flat"))
        for code in seen:  # "503" has its Retry-After; an error's name is never a code
            if code != "503" and (code != "200" if good else not (code.isdigit() and code[0] == "4")):
                return False
    return True


def print_figures(title: str, r: dict[str, float], server: dict[str, float]) -> None:
    print(title)
    if "latency_p50_ms" in r:
        print(f"  latency p50 {r['latency_p50_ms']:.1f} ms  p95 {r['latency_p95_ms']:.1f} ms  "
              f"p99 {r['latency_p99_ms']:.1f} ms  max {r['latency_max_ms']:.1f} ms")
    print(f"  /healthz meanwhile: p50 {r['healthz_p50_ms']:.1f} ms  p99 {r['healthz_p99_ms']:.1f} ms  "
          f"max {r['healthz_max_ms']:.1f} ms")
    print(f"  server peak memory (VmHWM): {server['warm_peak'] / MiB:.0f} MiB after the warm-up request, "
          f"{server['peak'] / MiB:.0f} MiB at the end (limit {PEAK_LIMIT / MiB:.0f} MiB); "
          f"1-min load average {server['load']:.1f}")


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
    ap.add_argument("--phases", default="good,attack", help="comma-separated: good, attack")
    ap.add_argument("--flood", type=int, default=48, help="good-cell clients at once in the attack")
    ap.add_argument("--bombs", type=int, default=4, help="16-flat-PNG clients at once in the attack")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    images = real_images(data_root())
    ok = True
    limits = ServeSettings()
    print(f"server limits (defaults): {limits.limits()}, {limits.max_active} running and "
          f"{limits.max_queue} waiting at most")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or quick_bundle([data_root() / "cnmc_sample"], Path(tmp) / "run",
                                             model="leukonet", epochs=3, img_size=96)
        for phase in ("good", "attack"):
            if phase not in phases:
                continue
            with serving(bundle, "--threads", str(args.threads), "--runtime", args.runtime) as server:
                # one warm-up request so lazy initialisation is not counted as latency or memory
                httpx.post(f"{server.url}/api/predict", files=[("files", images[0])], timeout=args.timeout)
                mem = {"warm_peak": float(server.peak_rss())}
                if phase == "good":
                    r = asyncio.run(run_load(server.url, images, args.requests, args.concurrency,
                                             args.explain, args.timeout))
                else:
                    answers, wall, health = asyncio.run(run_attack(server.url, images[1], args.flood,
                                                                   args.bombs, args.timeout))
                    r = {"wall_s": wall, **ms_stats(health, "healthz")}
                mem.update(peak=float(server.peak_rss()), load=load_average())
            ok &= mem["peak"] < PEAK_LIMIT
            if phase == "good":
                print_figures(f"load test: {bundle} on {server.url} (--threads {args.threads} --runtime "
                              f"{args.runtime}), {args.requests} requests, {args.concurrency} concurrent, "
                              f"one image each, explanations {'on' if args.explain else 'off'}", r, mem)
                print(f"  ok {r['ok']}/{r['requests']}  failures {r['failures']}  5xx {r['5xx']}")
                print(f"  throughput {r['rps']:.1f} requests/s over {r['wall_s']:.1f} s")
                ok &= r["failures"] == 0 and r["5xx"] == 0
            else:
                print_figures(f"attack: {args.bombs} + 2 + 2 + {args.flood} + 2 clients at once, over "
                              f"{r['wall_s']:.1f} s", r, mem)
                for kind, seen in answers.items():
                    print(f"  {kind}: " + ", ".join(f"{code} x{n}" for code, n in sorted(seen.items())))
                ok &= attack_refused(answers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
