"""Reproduce the README's Results: classical leaderboards, CNN training + held-out evaluation, throughput.

    python benchmarks/run_all.py [--only STEP ...] [--force] [--quick] [--update-readme] [--data DIR]

Runs on ``$LEUKOSCOPE_DATA`` (default ../shared/data) through the public CLI, one child process per
step, each wrapped by a tiny measurer (``benchmarks/measure.py``) that records its wall time and
peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of the step, read in a process of
its own). The steps (``plan.py``; data sets and protocols in ``suite.py``):

- ``leaderboard-<data>-<features>``: ``leukoscope benchmark`` (every classical model, 5-fold CV
  grouped by subject where there are subjects) with handcrafted, deep and both feature kinds;
- ``train-<data>-<model>``: ``leukoscope train`` for efficientnet_lite0 (fine-tuned) and leukonet
  (small, from scratch); then ``evaluate-<data>-<model>``: ``leukoscope evaluate --side test`` on
  the held-out test side. The C-NMC cells (65) use subject-grouped 5-fold CV instead (``--cv 5``,
  pooled out-of-fold figures), since a held-out side would hold about ten cells;
- ``throughput``: ``benchmarks/throughput.py`` on the aria_all EfficientNet-Lite0 bundle;
- ``patients``: ``benchmarks/patients.py``, every patient-level method (APL vs AML per patient on
  DeepAPL) under repeated patient-grouped CV;
- ``neardup``: ``benchmarks/neardup.py``, the audit's near-duplicate recall per kind of copy on 200
  distinct real cells, and its false pairs among them.
- ``unfamiliar``: ``benchmarks/unfamiliar.py``, every unfamiliarity score on foreign cells (DeepAPL
  blasts for a PBC model, C-NMC for ALL-IDB2, PBC for aria_all).

Optional, with ``--cnmc-rehearsal DIR``: ``benchmarks/cnmc_rehearsal.py``, the full C-NMC download's
layout (15,115 files, ~10 GB of synthetic BMPs under DIR) through describe, audit, train and evaluate,
about an hour on 2 cores; its figures go to DIR/results.md, not to the README.

A step whose outputs exist is skipped (``--force`` reruns it); ``--only`` takes step names or globs.
Writes benchmarks/results/{models,leaderboards,throughput,steps,patients}.csv and summary.md (``collect.py``).
Then, with ``--update-readme``, rewrites the README Results section from them (``readme.py``);
otherwise it checks the README against them (benchmarks/check_readme.py) and exits non-zero on a
mismatch. ``--quick`` is a smoke test: tiny subsets and settings, results in
benchmarks/results/quick/, README left alone.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from check_readme import check
from collect import collect
from machine import hardware
from plan import HERE, Plan, Step, make_plan
from readme import README, replace_section

ROOT = HERE.parent


def run_step(step: Step, force: bool, env: dict[str, str]) -> str:
    """Run one step (or skip it when its outputs exist); its status."""
    record = step.record()
    if step.done.exists() and record and not force:
        return "skipped (done)"
    failed_before = record is not None and record["rc"] != 0  # start over; an interrupted step resumes
    if (force or failed_before) and step.folder.exists():
        shutil.rmtree(step.folder)
    step.folder.mkdir(parents=True, exist_ok=True)
    with open(step.folder / "log.txt", "w") as log:
        rc = subprocess.call([sys.executable, str(HERE / "measure.py"), str(step.folder / "step.json"), "--",
                              *step.cmd], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if step.collect:
        step.collect()
    if rc != 0 or not step.done.exists():
        return f"failed (exit {rc}; see {step.folder / 'log.txt'})"
    return "ok"


def step_env(plan: Plan) -> dict[str, str]:
    return {**os.environ, "LEUKOSCOPE_DATA": str(plan.data), "LEUKOSCOPE_CACHE": str(plan.runs / "cache"),
            "COLUMNS": "120"}


def rehearsal_step(plan: Plan, out: Path) -> Step:
    """The full-scale C-NMC rehearsal as a step (not in the plan: the README does not use it)."""
    out = out.resolve()
    cmd = [sys.executable, str(HERE / "cnmc_rehearsal.py"), "--out", str(out)]
    return Step("cnmc-rehearsal", cmd, plan.step_dir("cnmc-rehearsal"), out / "rehearsal.done")


def execute(plan: Plan, only: list[str], force: bool) -> dict[str, str]:
    env = step_env(plan)
    failed: set[str] = set()
    status: dict[str, str] = {}
    for step in plan.steps:
        if only and not any(fnmatch.fnmatch(step.name, pat) for pat in only):
            continue
        if any(a in failed for a in step.after):
            status[step.name] = "not run (a step it needs failed)"
            failed.add(step.name)
        else:
            t0 = time.perf_counter()
            print(f"[{datetime.now(UTC):%H:%M:%S}] {step.name} ...", end=" ", flush=True)
            status[step.name] = run_step(step, force, env)
            print(f"{status[step.name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if not status[step.name].startswith(("ok", "skipped")):
                failed.add(step.name)
    return status


def main(argv: list[str] | None = None) -> int:
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], metavar="STEP",
                    help="Run only these steps (names or globs, repeatable); the summary uses every result.")
    ap.add_argument("--force", action="store_true", help="Rerun steps whose outputs exist.")
    ap.add_argument("--quick", action="store_true", help="Smoke test: tiny subsets and settings.")
    ap.add_argument("--update-readme", action="store_true", help="Rewrite the README Results section.")
    ap.add_argument("--list", action="store_true", help="List the steps and exit.")
    ap.add_argument("--data", type=Path, default=None, help="Data root (default: $LEUKOSCOPE_DATA).")
    ap.add_argument("--cnmc-rehearsal", type=Path, default=None, metavar="DIR",
                    help="Also rehearse the full C-NMC download under DIR (~10 GB, ~1 h on 2 cores).")
    args = ap.parse_args(argv)

    data = (args.data or data_root()).resolve()
    results = HERE / "results" / ("quick" if args.quick else "")
    plan = make_plan(data, results.resolve(), args.quick)
    if args.list:
        for s in plan.steps:
            print(s.name, "(done)" if s.done.exists() else "")
        return 0
    print(f"data: {data}\nresults: {plan.results}\nhardware: {hardware()}", flush=True)
    t0 = time.perf_counter()
    status = execute(plan, args.only, args.force)
    if args.cnmc_rehearsal is not None:
        step = rehearsal_step(plan, args.cnmc_rehearsal)
        print(f"[{datetime.now(UTC):%H:%M:%S}] {step.name} ...", end=" ", flush=True)
        status[step.name] = run_step(step, args.force, step_env(plan))
        print(status[step.name], flush=True)
    print(f"steps took {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    section = collect(plan, status)
    print(f"wrote {plan.results / 'summary.md'} and models, leaderboards, throughput, steps .csv")
    failed = [n for n, s in status.items() if not s.startswith(("ok", "skipped"))]
    if args.quick:
        return 1 if failed else 0
    if args.update_readme:
        README.write_text(replace_section(README.read_text(), section))
        print(f"rewrote the Results section of {README}")
        return 1 if failed else 0
    problems = check(README, plan.results)
    for p in problems:
        print(f"README mismatch: {p}", file=sys.stderr)
    print("README Results match this run" if not problems else f"{len(problems)} README mismatch(es)")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
