"""Unfamiliarity scores compared: does a bundle know a cell it has no business calling?

    python benchmarks/unfamiliar.py [--pairs pbc-deepapl,allidb2-cnmc,aria_all-pbc] [--runs DIR]
                                    [--max-foreign N] [--quick] [--out FILE]

For each pair, a model is trained on the first data set with the default recipe
(``leukoscope train DATA --model efficientnet_lite0``; reused when its run folder is finished), then
every method of ``leukoscope.models.unfamiliar`` (msp, energy, class-conditional Mahalanobis, kNN with
k = 1, 5, 10 on L2-normalised penultimate features) is fitted on the same embeddings of the run's
train side, thresholded at the 95th percentile of its validation side, and scored on the held-out test
side (familiar) and on the foreign cells:

- ``pbc-deepapl``: DeepAPL's blasts ("Blast, no lineage spec" folders) against DeepAPL's cells of the
  eight PBC-mapped types (the AUC asked for: both from the new lab, so stain alone cannot separate them);
- ``allidb2-cnmc``: every C-NMC cell (cnmc_sample + cnmc_cells) against ALL-IDB2's test side;
- ``aria_all-pbc``: every PBC cell against aria_all's test side.

Per method: ROC AUC (foreign vs familiar, higher score = foreign), share of foreign cells flagged and of
familiar test cells flagged at the validation threshold; per model: test macro-F1 and accuracy.
Writes JSON (default benchmarks/results/unfamiliar.json) and prints a Markdown table with the load.
``--quick``: leukonet at 32 px for 2 epochs and at most 40 foreign cells (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
#: DeepAPL cell-type folders of the eight PBC classes (basophil, eosinophil, erythroblast, ig,
#: lymphocyte, monocyte, neutrophil, platelet); blasts are the foreign type.
DEEPAPL_KNOWN = ("Basophil", "Eosinophils", "Erythroblast", "Metamyelocyte", "Myelocyte", "Promyelocyte",
                 "Lymphocyte", "Monocyte", "Segmented neutrophils", "Band neutrophils", "Giant thrombocyte")
DEEPAPL_BLAST = ("Blast, no lineage spec",)
PAIRS = ("pbc-deepapl", "allidb2-cnmc", "aria_all-pbc")
METHODS = (("msp", 1), ("energy", 1), ("mahalanobis", 1), ("knn", 1), ("knn", 5), ("knn", 10))


def deepapl_cells(data: Path, types: tuple[str, ...]) -> list[Path]:
    """Signed DeepAPL cells whose cell-type folder is one of ``types``."""
    return sorted(p for p in (data / "deepapl" / "Data" / "All").rglob("*.jpg")
                  if p.parent.name in types and "Signed slides" in p.parts)


def images_of(folder: Path) -> list[Path]:
    from leukoscope.data.images import iter_image_files

    return sorted(iter_image_files(folder))


def foreign_sets(pair: str, data: Path) -> dict[str, list[Path]]:
    """The foreign cells of ``pair`` (and, for DeepAPL, the new lab's familiar types)."""
    if pair == "pbc-deepapl":
        return {"foreign": deepapl_cells(data, DEEPAPL_BLAST),
                "new_lab_known": deepapl_cells(data, DEEPAPL_KNOWN)}
    if pair == "allidb2-cnmc":
        return {"foreign": images_of(data / "cnmc_sample") + images_of(data / "cnmc_cells")}
    return {"foreign": images_of(data / "pbc")}


def spread(paths: list[Path], n: int) -> list[Path]:
    """At most ``n`` paths, evenly spaced (every patient / folder keeps its share)."""
    return paths if len(paths) <= n else [paths[i] for i in np.linspace(0, len(paths) - 1, n).astype(int)]


def embed(bundle: Any, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from leukoscope.data.images import load_batch

    logits, embs = [], []
    for i in range(0, len(paths), 64):
        _, images, _ = load_batch(paths[i:i + 64])
        if images:
            lg, em = bundle.embed_logits(images)
            logits.append(lg)
            embs.append(em)
    return np.concatenate(logits), np.concatenate(embs)


def auc(familiar: np.ndarray, foreign: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(familiar)), np.ones(len(foreign))]
    return float(roc_auc_score(y, np.r_[familiar, foreign]))


def train_run(name: str, data: Path, runs: Path, quick: bool) -> Any:
    from leukoscope.bundle import load_bundle
    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    model = "leukonet" if quick else "efficientnet_lite0"
    cfg = TrainConfig.build(model=model, **({"epochs": 2, "img_size": 32} if quick else {}))
    out = runs / f"{name}-{model}"
    train(read([data / name]), cfg, out)
    return load_bundle(out / "bundle", runtime="torch")


def measure(pair: str, data: Path, runs: Path, max_foreign: int, quick: bool) -> dict[str, Any]:
    from leukoscope.evaluate.metrics import classification_metrics
    from leukoscope.models.unfamiliar import fit_scorer, set_threshold

    trained = pair.split("-")[0]
    t0 = time.perf_counter()
    bundle = train_run(trained, data, runs, quick)
    split = bundle.split()
    side = {s: list(split.loc[split["side"] == s, "path"]) for s in ("train", "val", "test")}
    y_of = dict(zip(split["path"], split["label"], strict=True))
    got = {s: embed(bundle, p) for s, p in side.items()}
    sets = {k: spread(v, max_foreign) for k, v in foreign_sets(pair, data).items()}
    got |= {k: embed(bundle, [str(p) for p in v]) for k, v in sets.items()}
    classes = bundle.classes
    y_train = np.asarray([classes.index(y_of[p]) for p in side["train"]])
    y_test = np.asarray([classes.index(y_of[p]) for p in side["test"]])
    probs = np.exp(got["test"][0] / bundle.temperature)
    probs /= probs.sum(axis=1, keepdims=True)
    test = classification_metrics(y_test, probs, classes)
    familiar = "new_lab_known" if "new_lab_known" in got else "test"
    rows = []
    for method, k in METHODS:
        s = fit_scorer(got["train"][1], y_train, method, k=k, temperature=bundle.temperature)
        set_threshold(s, s.score(got["val"][1], got["val"][0]))
        score = {name: s.score(e, lg) for name, (lg, e) in got.items()}
        rows.append({"method": method if method != "knn" else f"knn (k={k})",
                     "auc": auc(score[familiar], score["foreign"]),
                     "auc_vs_test": auc(score["test"], score["foreign"]),
                     "foreign_flagged": float(s.flag(score["foreign"]).mean()),
                     "test_flagged": float(s.flag(score["test"]).mean()),
                     **({"new_lab_known_flagged": float(s.flag(score["new_lab_known"]).mean())}
                        if "new_lab_known" in score else {})})
    return {"pair": pair, "model": bundle.config["model"], "bundle": str(bundle.path),
            "familiar_for_auc": familiar, "n": {k: int(len(v[0])) for k, v in got.items()},
            "test_f1_macro": test["f1_macro"], "test_accuracy": test["accuracy"],
            "bundle_method": bundle.config.get("unfamiliar", {}).get("method"),
            "seconds": time.perf_counter() - t0, "methods": rows}


def markdown(results: list[dict[str, Any]], load: tuple[float, float, float]) -> str:
    lines = [f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {os.cpu_count()} cores", "",
             "| pair | model test macro-F1 | method | ROC AUC | AUC vs own test | foreign flagged | "
             "test flagged |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for m in r["methods"]:
            lines.append(f"| {r['pair']} | {r['test_f1_macro']:.3f} | {m['method']} | {m['auc']:.3f} | "
                         f"{m['auc_vs_test']:.3f} | {m['foreign_flagged']:.1%} | {m['test_flagged']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=",".join(PAIRS))
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("LEUKOSCOPE_DATA", HERE.parent.parent /
                                                                     "shared" / "data")))
    ap.add_argument("--runs", type=Path, default=HERE / "results" / "unfamiliar-runs")
    ap.add_argument("--max-foreign", type=int, default=600)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "unfamiliar.json")
    a = ap.parse_args()
    pairs = [p for p in a.pairs.split(",") if p]
    unknown = sorted(set(pairs) - set(PAIRS))
    if unknown:
        raise SystemExit(f"--pairs: unknown {', '.join(unknown)}; choose from {', '.join(PAIRS)}")
    max_foreign = min(a.max_foreign, 40) if a.quick else a.max_foreign
    results = [measure(p, a.data, a.runs, max_foreign, a.quick) for p in pairs]
    load = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"results": results, "load_average": load, "cores": os.cpu_count(),
                                 "quick": a.quick}, indent=2))
    print(markdown(results, load))


if __name__ == "__main__":
    main()
