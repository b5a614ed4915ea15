"""The benchmark's steps: one ``leukoscope`` command each, the output that means it is done, and
the steps it needs first; ``--quick`` makes the same plan on tiny subsets with tiny settings."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from suite import CV, DATASETS, FEATURES, NETWORKS, SEED

HERE = Path(__file__).resolve().parent
QUICK_TRAIN = {"epochs": 1, "img-size": 32, "batch-size": 8}
QUICK_MODELS = "logistic_regression,pca-svm,gaussian_nb"
QUICK_IMAGES = 48  # 12 per class of aria_all: the held-out split needs ~7 per class


@dataclass
class Step:
    name: str
    cmd: list[str]
    folder: Path
    done: Path  # the output whose presence means the step is finished
    after: list[str] = field(default_factory=list)
    collect: Callable[[], None] | None = None  # moves outputs written elsewhere into ``folder``

    def record(self) -> dict[str, Any] | None:
        """What ``measure.py`` recorded of the step's last run (None if it never ran)."""
        f = self.folder / "step.json"
        return json.loads(f.read_text()) if f.exists() else None


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

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


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

    def collect(folder: Path = d) -> None:  # bound now: ``d`` names later steps' folders below
        if written.exists():
            shutil.move(str(written), folder / "throughput.json")

    cmd = [sys.executable, str(HERE / "throughput.py"), "--bundle", str(bundle),
           "--images", "16" if quick else "800"]
    plan.steps.append(Step("throughput", cmd, d, d / "throughput.json",
                           after=["train-aria_all-efficientnet_lite0"], collect=collect))
    d = plan.step_dir("patients")  # patient-level APL vs AML on DeepAPL, every patient method
    cmd = [sys.executable, str(HERE / "patients.py"), "--out", str(d / "patients.json")]
    plan.steps.append(Step("patients", cmd + (["--quick"] if quick else []), d, d / "patients.json"))
    d = plan.step_dir("neardup")  # audit recall on planted copies of real cells, false pairs
    cmd = [sys.executable, str(HERE / "neardup.py"), "--out", str(d / "neardup.json")]
    plan.steps.append(Step("neardup", cmd + (["--cells", "20"] if quick else []), d, d / "neardup.json"))
    d = plan.step_dir("unfamiliar")  # unfamiliarity scores on foreign cells (benchmarks/unfamiliar.py)
    cmd = [sys.executable, str(HERE / "unfamiliar.py"), "--out", str(d / "unfamiliar.json"),
           "--runs", str(d / "runs"), "--data", str(data)]
    plan.steps.append(Step("unfamiliar", cmd + (["--quick"] if quick else []), d, d / "unfamiliar.json"))
    d = plan.step_dir("crosslab")  # PBC <-> DeepAPL: in-lab and cross-lab macro-F1, before / after robustness
    # the two defaults before / after; other recipes (the baseline, ...): crosslab.py --recipes
    cmd = [sys.executable, str(HERE / "crosslab.py"), "--out", str(d / "crosslab.csv"),
           "--recipes", "hc,hc-grey,hc-adapt,ft-150,ft,ft-adapt,ft-jitter"]
    plan.steps.append(Step("crosslab", cmd + (["--quick"] if quick else []), d, d / "crosslab.csv"))
    return plan
