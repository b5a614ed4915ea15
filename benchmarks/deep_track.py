"""The deep track's figures: headline training runs, C-NMC cross-validation, and an ablation.

    python benchmarks/deep_track.py [--part headline|cnmc|ablation|all] [--datasets aria_all allidb2]

- headline: ``leukoscope train DATA --model M`` with the model's default recipe, for M in
  efficientnet_lite0 and leukonet, on aria_all and allidb2; the frozen Lite0 features + logistic
  regression on the same split come with every Lite0 run (metrics.json ``frozen_lr``).
- cnmc: subject-grouped 5-fold CV on ``cnmc_sample cnmc_cells`` (65 cells, 31 subjects): weighted
  F1 per fold and pooled, fine-tuned vs frozen + LR, with a subject-bootstrap 95% interval.
- ablation: short Lite0 runs (96 px, 3 epochs; aria_all on half of its images) changing one
  setting at a time: crop-to-cell, stain normalisation, augmentation strength, input size,
  fine-tuning depth, BatchNorm mode, body learning rate; TTA is scored on the base run's bundle
  (same weights, with / without TTA). ``--only TEXT`` runs the settings whose name contains it
  (to spread the runs over several processes; a final run without it collects them all).

Every run lives in benchmarks/results/deep_track/<data>/<name> and resumes or is reused when the
script is rerun. Writes deep_track.json, deep_track.md and deep_track_ablation.png beside it, and
prints wall and CPU time with the load average (the machine may be shared with other work).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted")
ABLATION_BASE = {"model": "efficientnet_lite0", "img_size": 96, "epochs": 3, "patience": 3}
ABLATIONS: dict[str, dict[str, Any]] = {
    "base (96 px, 3 epochs, aug 1.0, full fine-tune)": {},
    "crop-to-cell": {"crop_to_cell": True},
    "stain reinhard": {"stain": "reinhard"},
    "stain macenko": {"stain": "macenko"},
    "no augmentation": {"augment": False},
    "aug strength 0.5": {"aug_strength": 0.5},
    "aug strength 1.5": {"aug_strength": 1.5},
    "input 64 px": {"img_size": 64},
    "input 128 px": {"img_size": 128},
    "fine-tune depth 0 (head only)": {"finetune_depth": 0},
    "fine-tune depth 4 (top stages)": {"finetune_depth": 4},
    "BatchNorm in train mode (batch statistics)": {"freeze_bn": False},
    "body learning rate = head's": {"body_lr": 1.0},
}
SUBSET = {"aria_all": 0.5}


class Printer:
    def task(self, description: str, total: int):
        return lambda n: None

    def done(self, description: str) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        print(f"    epoch {row['epoch']}: loss {row['train_loss']:.3f} val acc {row['val_accuracy']:.3f} "
              f"({row['seconds']:.0f} s)", flush=True)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run(data: list[str], name: str, options: dict[str, Any]) -> dict[str, Any]:
    """One ``train`` run (reused when already finished); its figures and times."""
    from leukoscope.data.readers import read
    from leukoscope.settings import data_root
    from leukoscope.train import TrainConfig, train

    out = RESULTS / "deep_track" / "+".join(data) / _slug(name)
    print(f"[{'+'.join(data)}] {name}: {options}", flush=True)
    bundle = train(read([data_root() / d for d in data]), TrainConfig.build(**options), out, Printer())
    mt = bundle.metrics()
    timing = mt.get("timing", {"wall_s": float("nan"), "cpu_s": float("nan"), "load_average": float("nan")})
    row = {"data": "+".join(data), "run": name, "options": options, "protocol": mt["protocol"],
           "test": {k: mt["test"][k] for k in KEYS}, "val": {k: mt["validation"][k] for k in KEYS},
           "best_epoch": mt["best_epoch"], "epochs_run": mt["epochs_run"], **timing,
           "bundle": str(bundle.path)}
    if "frozen_lr" in mt:
        row["frozen_lr_test"] = {k: mt["frozen_lr"]["test"][k] for k in KEYS}
    print(f"    test {row['test']}  wall {timing['wall_s']:.0f} s", flush=True)
    return row


def tta_row(base: dict[str, Any]) -> dict[str, Any]:
    """The base run's bundle scored on its test side with the eight flips / rotations."""
    import numpy as np

    from leukoscope.bundle import load_bundle
    from leukoscope.data.images import load_rgb
    from leukoscope.data.manifest import label_indices
    from leukoscope.evaluate.metrics import classification_metrics

    bundle = load_bundle(base["bundle"])
    split = bundle.split()
    test = split[split["side"] == "test"]
    images = [load_rgb(p) for p in test["path"]]
    y = np.asarray(label_indices(test, bundle.classes))
    bundle.config["tta"] = True
    figures = classification_metrics(y, bundle.predict_proba(images), bundle.classes)
    return {**base, "run": "TTA (x8 flips / rotations)", "options": {**base["options"], "tta": True},
            "test": {k: figures[k] for k in KEYS}}


def headline(datasets: list[str]) -> list[dict[str, Any]]:
    return [run([d], f"{m} default", {"model": m}) for d in datasets
            for m in ("efficientnet_lite0", "leukonet")]


def cnmc(k: int = 5) -> dict[str, Any]:
    from leukoscope.data.readers import read
    from leukoscope.settings import data_root
    from leukoscope.train import TrainConfig, cross_validate

    out = RESULTS / "deep_track" / "cnmc_sample+cnmc_cells" / f"lite0-cv{k}"
    m = read([data_root() / "cnmc_sample", data_root() / "cnmc_cells"])
    t0 = time.perf_counter()
    result = cross_validate(m, TrainConfig.build(model="efficientnet_lite0", cv=k, crop_to_cell=True,
                                                 img_size=128), out, Printer())
    result["wall_s"] = time.perf_counter() - t0
    print(json.dumps({k2: v for k2, v in result.items() if k2 != "folds"}, indent=1))
    for f in result["folds"]:
        print("   ", f)
    return result


def ablation(datasets: list[str], only: str = "") -> list[dict[str, Any]]:
    rows = []
    for d in datasets:
        for name, change in ABLATIONS.items():
            if only not in name:
                continue
            opts = {**ABLATION_BASE, "subset": SUBSET.get(d, 1.0), **change}
            rows.append(run([d], name, opts))
            if not change:
                rows.append(tta_row(rows[-1]))
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        part = [r for r in rows if r["data"] == d]
        ax.barh([r["run"] for r in part], [r["test"]["f1_macro"] for r in part], color="#4C72B0")
        lo = min(r["test"]["f1_macro"] for r in part)
        ax.set(xlim=(max(0.0, lo - 0.05), 1.0), xlabel="test macro F1", title=f"{d}: ablation")
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for part in ("headline", "ablation"):
        rows = results.get(part, [])
        if not rows:
            continue
        lines += [f"## {part}", "", "| data | run | test acc | test bal. acc | test macro F1 | "
                  "frozen+LR macro F1 | epochs (best) | wall s | load avg |", "|---" * 9 + "|"]
        for r in rows:
            fz = r.get("frozen_lr_test", {}).get("f1_macro")
            lines.append(f"| {r['data']} ({r['protocol']}) | {r['run']} | {r['test']['accuracy']:.4f} | "
                         f"{r['test']['balanced_accuracy']:.4f} | {r['test']['f1_macro']:.4f} | "
                         f"{'-' if fz is None else f'{fz:.4f}'} | {r['epochs_run']} ({r['best_epoch']}) | "
                         f"{r['wall_s']:.0f} | {r['load_average']:.1f} |")
        lines.append("")
    if "cnmc" in results:
        c = results["cnmc"]
        lines += ["## C-NMC subject-grouped CV", "", "| fold | test cells | subjects | fine-tuned wF1 | "
                  "frozen+LR wF1 |", "|---|---|---|---|---|"]
        for f in c["folds"]:
            fz = f.get("frozen_lr_f1_weighted", float("nan"))
            lines.append(f"| {f['fold']} | {f['test_images']} | {f['test_groups']} | "
                         f"{f['f1_weighted']:.3f} | {fz:.3f} |")
        lines.append(f"\npooled weighted F1 {c['pooled']['f1_weighted']:.3f}, 95% subject-bootstrap "
                     f"interval {c['f1_weighted_ci95'][0]:.2f}-{c['f1_weighted_ci95'][1]:.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("headline", "cnmc", "ablation", "all"), default="all")
    ap.add_argument("--datasets", nargs="+", default=["aria_all", "allidb2"])
    ap.add_argument("--only", default="", help="ablation settings whose name contains this")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = RESULTS / "deep_track.json"
    results: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
    if args.part in ("headline", "all"):
        results["headline"] = headline(args.datasets)
    if args.part in ("cnmc", "all"):
        results["cnmc"] = cnmc()
    if args.part in ("ablation", "all"):
        results["ablation"] = ablation(args.datasets, args.only)
        plot(results["ablation"], RESULTS / "deep_track_ablation.png")
    store.write_text(json.dumps(results, indent=2, default=str) + "\n")
    (RESULTS / "deep_track.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
