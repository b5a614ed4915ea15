"""Reproduce the README's Results: classical leaderboards, CNN training + held-out evaluation, throughput.

    python benchmarks/run_all.py [--only STEP ...] [--force] [--quick] [--update-readme] [--data DIR]

Runs on ``$LEUKOSCOPE_DATA`` (default ../shared/data) through the public CLI, one child process per
step, each wrapped by a tiny measurer that records its wall time and peak resident memory
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of the step, read in a process of its own):

- ``leaderboard-<data>-<features>``: ``leukoscope benchmark`` (every classical model, 5-fold CV
  grouped by subject where there are subjects) with handcrafted, deep and both feature kinds;
- ``train-<data>-<model>``: ``leukoscope train`` for efficientnet_lite0 (fine-tuned) and leukonet
  (small, from scratch); then ``evaluate-<data>-<model>``: ``leukoscope evaluate --side test`` on
  the held-out test side. The C-NMC cells (65) use subject-grouped 5-fold CV instead (``--cv 5``,
  pooled out-of-fold figures), since a held-out side would hold about ten cells;
- ``throughput``: ``benchmarks/throughput.py`` on the aria_all EfficientNet-Lite0 bundle.

A step whose outputs exist is skipped (``--force`` reruns it); ``--only`` takes step names or globs.
Writes benchmarks/results/{models,leaderboards,throughput,steps}.csv and summary.md. Then, with
``--update-readme``, rewrites the README Results section from them; otherwise it checks the README
against them (benchmarks/check_readme.py) and exits non-zero on a mismatch. ``--quick`` is a smoke
test: tiny subsets and settings, results in benchmarks/results/quick/, README left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SEED = 0
CV = 5
METRIC_KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc")
NETWORKS = ("efficientnet_lite0", "leukonet")
FEATURES = ("handcrafted", "deep", "both")
ROW_KINDS = {"best-classical": "best classical", "pca-svm": "PCA+SVM seed design",
             "efficientnet_lite0": "fine-tuned CNN", "leukonet": "small CNN"}


@dataclass(frozen=True)
class Dataset:
    key: str
    title: str
    folders: tuple[str, ...]
    protocol: str
    #: the network's ``leukoscope train`` options (epochs / input size sized for the 60-minute budget)
    train: dict[str, dict[str, Any]]
    cv: bool = False  # networks: subject-grouped K-fold instead of one held-out split


# Both networks train with their default recipes (train_defaults in src/leukoscope/models/networks.py):
# what `leukoscope train PATH --model NAME` does. Lite0: 128 px, 6 epochs or at least 150 steps
# (aria_all 6 epochs, allidb2 30, the C-NMC folds ~38 tiny ones). Seeds are the defaults' (0).
DATASETS = (
    Dataset("cnmc", "C-NMC cells", ("cnmc_sample", "cnmc_cells"), "subject-grouped",
            {"efficientnet_lite0": {}, "leukonet": {}}, cv=True),
    Dataset("allidb2", "ALL-IDB2", ("allidb2",), "image-level",
            {"efficientnet_lite0": {}, "leukonet": {}}),
    Dataset("aria_all", "4-class ALL (aria_all)", ("aria_all",), "image-level",
            {"efficientnet_lite0": {}, "leukonet": {}}),
)
QUICK_TRAIN = {"epochs": 1, "img-size": 32, "batch-size": 8}
QUICK_MODELS = "logistic_regression,pca-svm,gaussian_nb"
QUICK_IMAGES = 48  # 12 per class of aria_all: the held-out split needs ~7 per class


# ---------------------------------------------------------------- measuring one step


def measure(out: Path, cmd: list[str]) -> int:
    """Run ``cmd`` as this process's only child; write its wall time and peak RSS to ``out``."""
    import resource

    started = datetime.now(UTC).isoformat(timespec="seconds")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    out.write_text(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mb": peak_kb / 1024,
                               "started": started, "load_before": load,
                               "load_after": os.getloadavg()[0], "cmd": cmd}, indent=2) + "\n")
    return rc


# ---------------------------------------------------------------- the plan


@dataclass
class Step:
    name: str
    cmd: list[str]
    folder: Path
    done: Path  # the output whose presence means the step is finished
    after: list[str] = field(default_factory=list)
    collect: Callable[[], None] | None = None  # moves outputs written elsewhere into ``folder``


@dataclass
class Plan:
    data: Path
    results: Path
    quick: bool
    inputs: dict[str, list[str]]  # dataset key -> paths given to the CLI
    steps: list[Step] = field(default_factory=list)

    @property
    def runs(self) -> Path:
        return self.results / "run_all"

    def step_dir(self, name: str) -> Path:
        return self.runs / name


def leukoscope() -> str:
    exe = Path(sys.executable).with_name("leukoscope")
    return str(exe) if exe.exists() else "leukoscope"


def quick_inputs(data: Path, out: Path) -> dict[str, list[str]]:
    """A few images per class of each data set, as CSV manifests (subjects kept), for --quick."""
    from leukoscope.data.readers import read

    out.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for ds in DATASETS:
        m = read([data / f for f in ds.folders])
        m = m[m["label"] != ""]
        per = max(2, QUICK_IMAGES // m["label"].nunique())
        if m["subject"].notna().any():  # whole subjects, so the CSV keeps several groups per class
            keep = [s for _, part in m.groupby("label") for s in sorted(part["subject"].unique())[:per]]
            m = m[m["subject"].isin(keep)]
        else:
            m = pd.concat(part.sample(min(per, len(part)), random_state=0) for _, part in m.groupby("label"))
        path = out / f"{ds.key}.csv"
        m[["path", "label", "subject"]].to_csv(path, index=False)
        inputs[ds.key] = [str(path)]
    return inputs


def make_plan(data: Path, results: Path, quick: bool) -> Plan:
    inputs = (quick_inputs(data, results / "data") if quick
              else {ds.key: [str(data / f) for f in ds.folders] for ds in DATASETS})
    plan = Plan(data, results, quick, inputs)
    exe = leukoscope()
    for ds in DATASETS:
        paths = inputs[ds.key]
        for kind in FEATURES:
            name = f"leaderboard-{ds.key}-{kind}"
            d = plan.step_dir(name)
            cmd = [exe, "benchmark", *paths, "--features", kind, "--cv", str(2 if quick else CV),
                   "--seed", str(SEED), "--out", str(d / "out")]
            if quick:
                cmd += ["--models", QUICK_MODELS]
            plan.steps.append(Step(name, cmd, d, d / "out" / "leaderboard.csv"))
        for model in NETWORKS:
            name = f"train-{ds.key}-{model}"
            d = plan.step_dir(name)
            opts = QUICK_TRAIN if quick else ds.train[model]
            cmd = [exe, "train", *paths, "--model", model, "--seed", str(SEED), "--out", str(d / "run")]
            cmd += [x for k, v in opts.items() for x in (f"--{k}", str(v))]
            if ds.cv:
                cmd += ["--cv", str(2 if quick else CV)]
                plan.steps.append(Step(name, cmd, d, d / "run" / "cv.json"))
                continue
            plan.steps.append(Step(name, cmd, d, d / "run" / ".done"))
            ename = f"evaluate-{ds.key}-{model}"
            e = plan.step_dir(ename)
            cmd = [exe, "evaluate", str(d / "run" / "bundle"), *paths, "--side", "test",
                   "--out", str(e / "out")]
            plan.steps.append(Step(ename, cmd, e, e / "out" / "metrics.json", after=[name]))
    bundle = plan.step_dir("train-aria_all-efficientnet_lite0") / "run" / "bundle"
    d = plan.step_dir("throughput")
    written = HERE / "results" / "throughput.json"  # where benchmarks/throughput.py writes

    def collect() -> None:
        if written.exists():
            shutil.move(str(written), d / "throughput.json")

    cmd = [sys.executable, str(HERE / "throughput.py"), "--bundle", str(bundle),
           "--images", "16" if quick else "256"]
    plan.steps.append(Step("throughput", cmd, d, d / "throughput.json",
                           after=["train-aria_all-efficientnet_lite0"], collect=collect))
    return plan


def step_record(step: Step) -> dict[str, Any] | None:
    f = step.folder / "step.json"
    return json.loads(f.read_text()) if f.exists() else None


def run_step(step: Step, force: bool, env: dict[str, str]) -> str:
    """Run one step (or skip it when its outputs exist); its status."""
    record = step_record(step)
    if step.done.exists() and record and not force:
        return "skipped (done)"
    failed_before = record is not None and record["rc"] != 0  # start over; an interrupted step resumes
    if (force or failed_before) and step.folder.exists():
        shutil.rmtree(step.folder)
    step.folder.mkdir(parents=True, exist_ok=True)
    with open(step.folder / "log.txt", "w") as log:
        rc = subprocess.call([sys.executable, __file__, "--measure", str(step.folder / "step.json"), "--",
                              *step.cmd], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if step.collect:
        step.collect()
    if rc != 0 or not step.done.exists():
        return f"failed (exit {rc}; see {step.folder / 'log.txt'})"
    return "ok"


def execute(plan: Plan, only: list[str], force: bool) -> dict[str, str]:
    env = {**os.environ, "LEUKOSCOPE_DATA": str(plan.data),
           "LEUKOSCOPE_CACHE": str(plan.runs / "cache"), "COLUMNS": "120"}
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


# ---------------------------------------------------------------- collecting the figures


def _metrics(src: dict[str, Any]) -> dict[str, Any]:
    return {k: src.get(k) for k in METRIC_KEYS}


def leaderboards(plan: Plan) -> pd.DataFrame:
    frames = []
    for ds in DATASETS:
        for kind in FEATURES:
            f = plan.step_dir(f"leaderboard-{ds.key}-{kind}") / "out" / "leaderboard.csv"
            if f.exists():
                folds = json.loads((f.parent / "run.json").read_text())["folds"]
                frames.append(pd.read_csv(f).assign(dataset=ds.key, features=kind, folds=folds))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def classical_rows(ds: Dataset, lb: pd.DataFrame) -> list[dict[str, Any]]:
    """The best classical model over every feature kind, and the PCA+SVM seed design (deep features)."""
    part = lb[(lb["dataset"] == ds.key) & (lb["status"] == "ok")] if len(lb) else lb
    rows = []
    picks: list[tuple[str, pd.DataFrame]] = [("best-classical", part), ("pca-svm", part[
        (part["model"] == "pca-svm") & (part["features"] == "deep")] if len(part) else part)]
    for kind, sel in picks:
        if sel.empty:
            continue
        sel = sel.sort_values(["balanced_accuracy_mean", "roc_auc_mean", "model", "features"],
                              ascending=[False, False, True, True])
        r = sel.iloc[0]
        rows.append({"row": kind, "model": r["model"], "features": r["features"], "protocol": r["protocol"],
                     "evaluation": f"{r['folds']}-fold CV (mean)", "n": None,
                     **{k: r[f"{k}_mean"] for k in METRIC_KEYS}, "train_s": r["fit_s_mean"]})
    return rows


def network_rows(ds: Dataset, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for model in NETWORKS:
        train = step_record(next(s for s in plan.steps if s.name == f"train-{ds.key}-{model}"))
        run = plan.step_dir(f"train-{ds.key}-{model}") / "run"
        row = {"row": model, "model": model, "features": "pixels"}
        if ds.cv and (run / "cv.json").exists() and train:
            cv = json.loads((run / "cv.json").read_text())
            rows.append(row | {"protocol": cv["protocol"], "evaluation": f"{cv['k']}-fold CV (pooled)",
                               "n": cv["pooled"]["n"], **_metrics(cv["pooled"]),
                               "train_s": train["wall_s"] / cv["k"]})
        metrics = plan.step_dir(f"evaluate-{ds.key}-{model}") / "out" / "metrics.json"
        if not ds.cv and metrics.exists() and train:
            r = json.loads(metrics.read_text())
            rows.append(row | {"protocol": r["protocol"], "evaluation": "held-out test",
                               "n": r["evaluated"], **_metrics(r["cell"]), "train_s": train["wall_s"]})
    return rows


def model_table(plan: Plan, lb: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for ds in DATASETS:
        found = {r["row"]: r for r in classical_rows(ds, lb) + network_rows(ds, plan)}
        for kind in ROW_KINDS:
            missing = {"row": kind, "evaluation": "not measured yet"}
            rows.append({"dataset": ds.key, **found.get(kind, missing)})
    cols = ["dataset", "row", "model", "features", "protocol", "evaluation", "n", *METRIC_KEYS, "train_s"]
    return pd.DataFrame(rows).reindex(columns=cols)


def throughput_table(plan: Plan) -> tuple[pd.DataFrame, dict[str, Any]]:
    f = plan.step_dir("throughput") / "throughput.json"
    if not f.exists():
        return pd.DataFrame(columns=["method", "cells_per_s"]), {}
    t = json.loads(f.read_text())
    rows = [{"method": k, "cells_per_s": v} for k, v in t["cells_per_second"].items()]
    rows.append({"method": "FLOP-bound limit (measured matmul rate / model FLOPs)",
                 "cells_per_s": t["flop_bound_cells_per_second"]})
    return pd.DataFrame(rows), t


def steps_table(plan: Plan, status: dict[str, str]) -> pd.DataFrame:
    rows = []
    for s in plan.steps:
        rec = step_record(s) or {}
        ok = s.done.exists() and rec.get("rc") == 0
        rows.append({"step": s.name, "status": status.get(s.name, "done earlier" if ok else "not run"),
                     "wall_s": rec.get("wall_s") if ok else None,
                     "peak_rss_mb": rec.get("peak_rss_mb") if ok else None,
                     "started": rec.get("started"), "load_before": rec.get("load_before")})
    return pd.DataFrame(rows)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


# ---------------------------------------------------------------- rendering


def hardware() -> str:
    cpu, ram = "unknown CPU", ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    with contextlib.suppress(OSError, StopIteration):
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        ram = f", {kb / 1024 ** 2:.0f} GB RAM"
    return f"{cpu}, {os.cpu_count()} cores{ram}; Python {platform.python_version()}, {platform.system()}"


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def fmt_time(v: Any) -> str:
    if v is None or pd.isna(v):
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


TITLES = {ds.key: ds.title for ds in DATASETS}
RESULT_HEADER = ["Data set", "Row", "Model", "Features", "Evaluation", "Accuracy", "Balanced acc.",
                 "F1 macro", "F1 weighted", "ROC AUC", "Train s"]


def results_markdown(models: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(RESULT_HEADER) + " |", "|" + "---|" * 5 + "---:|" * 6]
    for _, r in models.iterrows():
        cells = [TITLES[r["dataset"]], ROW_KINDS[r["row"]], fmt(r["model"]), fmt(r["features"]),
                 fmt(r["evaluation"]) + (f", n = {int(r['n'])}" if pd.notna(r["n"]) else ""),
                 *(fmt(r[k]) for k in METRIC_KEYS), fmt_time(r["train_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def throughput_markdown(tp: pd.DataFrame, info: dict[str, Any]) -> str:
    if tp.empty:
        return "Throughput: not measured yet (step `throughput`)."
    head = (f"EfficientNet-Lite0 bundle of the aria_all row, {info['input_size']} px input, "
            f"{info['images']} aria_all images end to end from disk (decode, resize, model, CSV), "
            f"{info['cores']} cores, each method's best of {info.get('repeat', 1)} interleaved rounds; "
            "`benchmarks/throughput.py`.")
    lines = [head, "", "| Method | Cells/s |", "|---|---:|"]
    lines += [f"| {r['method']} | {r['cells_per_s']:.1f} |" for _, r in tp.iterrows()]
    return "\n".join(lines)


PUBLISHED = """\
### Published figures on these data sets (context only: not reproduced here)

Reported by their authors, under their own protocols; leukoscope has not re-run them.

- C-NMC 2019, final test set (subject-disjoint by construction), weighted F1: Pan et al. 91.04 (winner;
  fine-tuned ResNets + neighbourhood correction), Prellberg & Kramer 88.91 (ResNeXt + SE, 8-rotation
  test-time augmentation), Marzahl et al. 82.84. Data: Gupta A., Gupta R. (2019) ALL Challenge dataset
  of ISBI 2019, The Cancer Imaging Archive, doi:10.7937/tcia.2019.dc64i46r. Our C-NMC rows use 65 cells
  of 31 subjects, not the challenge's test set, so they are not comparable.
- ALL-IDB2: up to 100 % accuracy claimed, always with image-level splits. Data: R. Donida Labati,
  V. Piuri, F. Scotti, IEEE ICIP 2011, doi:10.1109/ICIP.2011.6115881.
- 4-class ALL set: 99.85 % accuracy (DenseNet201 after colour segmentation), image-level split, on all
  3,256 images (we use an evenly spaced 1,200). Data: Aria M. et al. (2021) doi:10.34740/KAGGLE/DSV/2175623;
  Ghaderzadeh M. et al., Int J Intell Syst 37(8):5113-5133, 2022, doi:10.1002/int.22753."""


def splits_text() -> str:
    cnmc = " + ".join(f"`{f}`" for f in DATASETS[0].folders)
    return (f"**Splits.** C-NMC cells ({cnmc}): **subject-grouped** everywhere; the classical "
            f"leaderboard is {CV}-fold CV grouped by subject and the CNN rows pool the out-of-fold "
            f"predictions of subject-grouped {CV}-fold CV (`leukoscope train --cv {CV}`), because a "
            "held-out side of 65 cells would hold about ten. ALL-IDB2 and aria_all have no subject ids: "
            "their splits are **image-level** (cells of one patient may sit on both sides) and may be "
            "optimistic. Classical rows are means over the folds; CNN rows on ALL-IDB2 and aria_all are "
            "scored once on a held-out 15 % test side (`leukoscope evaluate --side test`); so the two "
            "kinds of row are not on the same test cells.")


def times_text(steps: pd.DataFrame) -> str:
    done = steps.dropna(subset=["wall_s"])
    total = done["wall_s"].sum()
    peak = done["peak_rss_mb"].max() if len(done) else float("nan")
    return ("**Train s**: classical = mean fit time per CV fold on cached features; CNN = wall time of "
            "`leukoscope train` (decoding, head warm-up, every epoch, evaluation), per fold for C-NMC. "
            f"Whole benchmark: {total / 60:.0f} min of step wall time over {len(done)} steps, "
            f"largest peak memory of a step {fmt(peak, 0)} MB (per step in `benchmarks/results/summary.md`).")


def readme_section(models: pd.DataFrame, tp: pd.DataFrame, tp_info: dict[str, Any],
                   steps: pd.DataFrame) -> str:
    loads = steps["load_before"].dropna()
    when = steps["started"].dropna()
    measured = (f"Measured {str(when.max())[:10]} on {hardware()}"
                + (f"; other work shared the machine (1-min load average up to {loads.max():.1f})"
                   if len(loads) and loads.max() > 2.5 else "") + ".")
    missing = models[models["evaluation"] == "not measured yet"]
    note = (f"\n\n**Not measured yet:** {len(missing)} row(s) marked —; rerun `make benchmark`."
            if len(missing) else "")
    return "\n\n".join([
        "## Results",
        "Generated by `make benchmark` (`benchmarks/run_all.py --update-readme`); `make benchmark` on a "
        "clean clone reruns every step and `benchmarks/check_readme.py` fails if a number below differs "
        "from the fresh run (metrics by more than 0.02 or one test image, times by more than 5x). "
        + measured,
        results_markdown(models) + note,
        splits_text(),
        times_text(steps),
        "### Throughput",
        throughput_markdown(tp, tp_info),
        PUBLISHED,
    ])


def summary_markdown(section: str, steps: pd.DataFrame, lb: pd.DataFrame) -> str:
    lines = ["# leukoscope benchmark summary", "", section, "", "## Steps", "",
             "| Step | Status | Wall s | Peak RSS MB | Started (UTC) | Load before |",
             "|---|---|---:|---:|---|---:|"]
    for _, r in steps.iterrows():
        lines.append(f"| {r['step']} | {r['status']} | {fmt_time(r['wall_s'])} | "
                     f"{fmt(r['peak_rss_mb'], 0)} | {fmt(r['started'])} | {fmt(r['load_before'], 1)} |")
    if len(lb):
        lines += ["", "## Every classical model (balanced accuracy, mean over folds)", ""]
        wide = lb[lb["status"] == "ok"].pivot_table(index=["dataset", "model"], columns="features",
                                                    values="balanced_accuracy_mean").reindex(columns=FEATURES)
        lines += ["| Data set | Model | " + " | ".join(FEATURES) + " |",
                  "|---|---|" + "---:|" * len(FEATURES)]
        lines += [f"| {TITLES[d]} | {m} | " + " | ".join(fmt(v) for v in row) + " |"
                  for (d, m), row in wide.iterrows()]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{README}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section}\n{END}{tail}"


def collect(plan: Plan, status: dict[str, str]) -> str:
    """Write the results CSVs and summary.md; the README section they give."""
    lb = leaderboards(plan)
    models = model_table(plan, lb)
    tp, tp_info = throughput_table(plan)
    steps = steps_table(plan, status)
    plan.results.mkdir(parents=True, exist_ok=True)
    write_csv(models, plan.results / "models.csv")
    write_csv(lb, plan.results / "leaderboards.csv")
    write_csv(tp, plan.results / "throughput.csv")
    write_csv(steps, plan.results / "steps.csv")
    section = readme_section(models, tp, tp_info, steps)
    (plan.results / "summary.md").write_text(summary_markdown(section, steps, lb))
    return section


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        return measure(Path(argv[1]), argv[3:])
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], metavar="STEP",
                    help="Run only these steps (names or globs, repeatable); the summary uses every result.")
    ap.add_argument("--force", action="store_true", help="Rerun steps whose outputs exist.")
    ap.add_argument("--quick", action="store_true", help="Smoke test: tiny subsets and settings.")
    ap.add_argument("--update-readme", action="store_true", help="Rewrite the README Results section.")
    ap.add_argument("--list", action="store_true", help="List the steps and exit.")
    ap.add_argument("--data", type=Path, default=None, help="Data root (default: $LEUKOSCOPE_DATA).")
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
    from check_readme import check

    problems = check(README, plan.results)
    for p in problems:
        print(f"README mismatch: {p}", file=sys.stderr)
    print("README Results match this run" if not problems else f"{len(problems)} README mismatch(es)")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
