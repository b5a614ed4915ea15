"""Cross-lab figures: train on PBC, score on DeepAPL's mapped cells, and the other way round.

    python benchmarks/crosslab.py [--family classical|deep] [--recipes a,b] [--source PBC|DeepAPL] [--quick]
                                  [--out FILE]

Both data sets go through the shipped class map ``pbc-deepapl`` (DeepAPL's 18 types onto PBC's 8; blasts,
smudge cells, ... left out and counted). For each recipe and each direction (source -> target):

- **in-lab** macro-F1: on the source lab's own held-out cells. Classical recipes: pooled out-of-fold
  predictions of 5-fold CV (PBC: image-level, it has no subject ids; DeepAPL: grouped by patient).
  Networks: the held-out test side of ``leukoscope train``'s split (15 %, grouped the same way);
- **cross-lab** macro-F1: the model fitted on the whole source (networks: the trained bundle) scored on
  every mapped cell of the other lab.

Recipes (``RECIPES``): the classical default (``train --model logistic_regression``: handcrafted features)
and the issue's baseline (frozen EfficientNet-Lite0 embeddings + logistic regression), each with and without
stain normalisation (``models/stain.py``: grey-world, Reinhard) fitted on the source's training cells, and
the two side by side (``both``); the deep default (``train --model efficientnet_lite0``, fine-tuned) with the
train options of each candidate (``--stain``, ``--stain-jitter``, more epochs, 224 px input;
``--crop-to-cell`` is none: it crops black-background images, C-NMC, and leaves PBC / DeepAPL cells as they
are). A candidate may also be adapted to the target lab as ``evaluate --adapt`` does, from its unlabelled
cells (classical, ``bundle.classical.adapted_pipeline``: the target's features standardised with its own
statistics, its class frequencies estimated by EM; networks, ``Bundle.adapted``: its mean logits moved onto
the training cells'); the in-lab figure is of the model as trained.
Features of normalised images are cached in the results folder.
Writes benchmarks/results/crosslab.csv (rows of both families are kept: a run replaces its own rows) and
prints a Markdown table with the machine load. ``--quick``: 12 cells a class, 64 px, 1 epoch (a smoke test).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.batches import chunks
from readme import DEEP_SIZE

HERE = Path(__file__).resolve().parent
MAP = "pbc-deepapl"
SETS = {"PBC": "pbc", "DeepAPL": "deepapl"}
FOLDS = 5
SEED = 0


@dataclass(frozen=True)
class Recipe:
    """One way to train: a classical pipeline on features of (stain-normalised) images, or a network."""

    key: str
    name: str
    family: str  # classical | deep
    stage: str  # before (the default as it was) | after (a robustness candidate)
    features: str = "handcrafted"
    stain: str = "none"
    train: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    #: scored on the target lab adapted to its cells, as ``evaluate --adapt`` does (classical:
    #: ``bundle.classical.adapted_pipeline``, networks: ``Bundle.adapted``)
    adapt: bool = False


RECIPES = [
    Recipe("hc", "handcrafted + LR", "classical", "before", "handcrafted", note="classical default"),
    Recipe("hc-grey", "handcrafted + LR, grey-world", "classical", "after", "handcrafted", "greyworld"),
    Recipe("hc-reinhard", "handcrafted + LR, Reinhard", "classical", "after", "handcrafted", "reinhard"),
    Recipe("hc-adapt", "handcrafted + LR, adapted to the new lab (--adapt)", "classical", "after",
           "handcrafted", adapt=True),
    Recipe("hc-grey-adapt", "handcrafted + LR, grey-world, adapted to the new lab (--adapt)", "classical",
           "after", "handcrafted", "greyworld", adapt=True),
    Recipe("both", "handcrafted + frozen Lite0 + LR", "classical", "after", "both"),
    Recipe("both-adapt", "handcrafted + frozen Lite0 + LR, adapted to the new lab (--adapt)", "classical",
           "after", "both", adapt=True),
    Recipe("lr", "frozen EfficientNet-Lite0 + LR", "classical", "before", "deep", note="issue baseline"),
    Recipe(
        "lr-grey", "frozen EfficientNet-Lite0 + LR, grey-world", "classical", "after", "deep", "greyworld"
    ),
    Recipe(
        "lr-reinhard", "frozen EfficientNet-Lite0 + LR, Reinhard", "classical", "after", "deep", "reinhard"
    ),
    Recipe("ft-150", "fine-tuned EfficientNet-Lite0, at least 150 steps", "deep", "before",
           note="deep default until the 400-step floor", train={"min_steps": 150}),
    Recipe("ft", "fine-tuned EfficientNet-Lite0", "deep", "after", note="deep default"),
    Recipe("ft-adapt", "fine-tuned EfficientNet-Lite0, adapted to the new lab (--adapt)", "deep", "after",
           adapt=True),
    Recipe(
        "ft-jitter",
        "fine-tuned EfficientNet-Lite0, stain jitter 0.2",
        "deep",
        "after",
        train={"stain_jitter": 0.2},
    ),
    Recipe("ft-e16", "fine-tuned EfficientNet-Lite0, 16 epochs", "deep", "after", train={"epochs": 16}),
    Recipe("ft-224", "fine-tuned EfficientNet-Lite0, 224 px", "deep", "after", train={"img_size": 224}),
    Recipe(
        "ft-grey", "fine-tuned EfficientNet-Lite0, grey-world", "deep", "after", train={"stain": "greyworld"}
    ),
    Recipe(
        "ft-grey-jitter",
        "fine-tuned EfficientNet-Lite0, grey-world + jitter 0.2",
        "deep",
        "after",
        train={"stain": "greyworld", "stain_jitter": 0.2},
    ),
]
#: Network settings for every deep recipe: the default schedule (6 epochs, stretched to the model's
#: ``min_steps``) at 128 px (the cells are ~360 px; 128 px keeps the shape).
DEEP = {"img_size": DEEP_SIZE, "seed": SEED}


def load(data: Path, quick: bool) -> dict[str, tuple[pd.DataFrame, dict[str, int]]]:
    """Each lab's labelled cells in the map's vocabulary, and the count of cells the map leaves out."""
    from leukoscope.data.classmap import load_class_map
    from leukoscope.data.manifest import labelled
    from leukoscope.data.readers import read

    cmap = load_class_map(MAP)
    out = {}
    for name, folder in SETS.items():
        m, dropped = cmap.apply(labelled(read([data / folder])))
        if quick:
            rows = [i for i in m.groupby("label").indices.values() for i in i[:: max(1, len(i) // 12)][:12]]
            m = m.iloc[sorted(rows)].reset_index(drop=True)
        out[name] = (m, dropped)
    return out


def folds(m: pd.DataFrame, k: int = FOLDS) -> np.ndarray:
    """Stratified folds grouped by ``group`` (the patient in DeepAPL, the image in PBC)."""
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.zeros(len(m), int)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=SEED)
    for i, (_, test) in enumerate(cv.split(np.zeros(len(m)), m["label"], m["group"])):
        fold[test] = i
    return fold


def macro_f1(y: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, labels=list(classes), average="macro", zero_division=0))


def scored(prefix: str, y: Sequence[str], pred: Sequence[str], groups: Sequence[Any],
           classes: Sequence[str]) -> dict[str, float]:
    """Macro-F1 of ``pred`` as ``<prefix>`` and its 95 % interval as ``<prefix>_lo`` / ``_hi``: resampled
    by whole ``groups`` (DeepAPL's patients; PBC's cells, it has no subject ids)."""
    from leukoscope.evaluate.metrics import bootstrap_ci

    index = {c: i for i, c in enumerate(classes)}
    lo, hi = bootstrap_ci(np.array([index[v] for v in y]), np.array([index[v] for v in pred]),
                          np.asarray(groups), SEED, metric="f1_macro")
    return {prefix: macro_f1(y, pred, classes), f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def _chunk(paths: list[str], stain_target: dict[str, Any], kind: str | None) -> Any:
    """Worker: decode and stain-normalise a chunk of images; their features too when ``kind`` is given."""
    from leukoscope.data.images import load_rgb
    from leukoscope.features import get_extractor
    from leukoscope.models import stain

    images = [stain.apply(load_rgb(p), stain_target) for p in paths]
    return get_extractor(kind).compute(images) if kind else images


def features(m: pd.DataFrame, kind: str, stain_target: dict[str, Any], cache: Path) -> np.ndarray:
    """Features of ``m``'s images after stain normalisation to ``stain_target`` (cached on disk); decoding,
    normalising and per-image (parallel) extractors run over every core."""
    from concurrent.futures import ProcessPoolExecutor

    from leukoscope.features import get_extractor

    if kind == "both":  # its two parts side by side, each cached on its own (as `extract` does)
        return np.hstack([features(m, part, stain_target, cache) for part in ("handcrafted", "deep")])
    # keyed on the last path parts, so a cache made on another machine (another data root) is reused
    cells = [Path(p).parts[-3:] for p in m["path"]]
    key = hashlib.sha1(repr((kind, sorted(stain_target.items()), cells)).encode()).hexdigest()[:16]
    f = cache / f"{kind}-{stain_target['method']}-{key}.npy"
    if f.exists():
        return np.load(f)
    ext = get_extractor(kind)
    parts = list(chunks(list(m["path"]), 32))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        done = list(pool.map(_chunk, parts, [stain_target] * len(parts),
                             [kind if ext.parallel else None] * len(parts)))
    X = np.concatenate(done if ext.parallel else [ext.compute(images) for images in done]).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, X)
    return X


def classical(
    r: Recipe, src: pd.DataFrame, tgt: pd.DataFrame, classes: list[str], cache: Path
) -> dict[str, Any]:
    """In-lab CV and cross-lab figures of a features + logistic-regression recipe."""
    from sklearn.base import clone

    from leukoscope.bundle.classical import adapted_pipeline, log_probabilities
    from leukoscope.data.images import load_rgb
    from leukoscope.leaderboard import build_estimators
    from leukoscope.models import stain

    # the stain target is learned from source cells only, as `train --stain` does (first 64 training cells)
    target = stain.fit([load_rgb(p) for p in src["path"][:64:1]], r.stain)
    Xs, Xt = features(src, r.features, target, cache), features(tgt, r.features, target, cache)
    est = build_estimators(["logistic_regression"], SEED)[0]["logistic_regression"]
    y = src["label"].to_numpy()
    fold = folds(src)
    oof = np.empty(len(src), object)
    for k in range(FOLDS):
        oof[fold == k] = clone(est).fit(Xs[fold != k], y[fold != k]).predict(Xs[fold == k])
    fitted = clone(est).fit(Xs, np.searchsorted(classes, y))  # class indices, as a bundle's pipeline
    if r.adapt:  # unsupervised: from the target's cells, not its labels
        prior = np.bincount(np.searchsorted(classes, y), minlength=len(classes)) / len(y)
        fitted, shift, _ = adapted_pipeline(fitted, Xt, prior)
    else:
        shift = np.zeros(len(classes))
    pred = np.asarray(classes)[(log_probabilities(fitted, Xt, len(classes)) + shift).argmax(1)]
    return {
        **scored("in_lab", y, oof, src["group"], classes),
        "in_lab_eval": f"{FOLDS}-fold CV (pooled)",
        "n_in": len(src),
        **scored("cross_lab", tgt["label"], pred, tgt["group"], classes),
    }


def deep(r: Recipe, src: pd.DataFrame, tgt: pd.DataFrame, classes: list[str], quick: bool) -> dict[str, Any]:
    """Fine-tune with ``leukoscope.train`` on the source: its test side in-lab, all target cells cross-lab."""
    from leukoscope.predict.adapt import adapt_to
    from leukoscope.progress import SILENT
    from leukoscope.train import TrainConfig, train

    smoke = {"img_size": 64, "epochs": 1, "min_steps": 0, "min_cells": 0} if quick else {}
    settings = {**DEEP, **r.train, **smoke}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = train(src, TrainConfig(model="efficientnet_lite0", **settings), Path(tmp) / "run", SILENT)
        split = bundle.split()
        test = src[src["path"].isin(set(split.loc[split["side"] == "test", "path"]))]

        def calls(model: Any, paths: list[str]) -> np.ndarray:
            probs = np.concatenate([model.predict_proba(part) for part in chunks(paths, 64)])
            return np.asarray(model.classes)[probs.argmax(1)]

        scorer = adapt_to(bundle, list(tgt["path"])) if r.adapt else bundle  # from its cells, not labels
        own, other = calls(bundle, list(test["path"])), calls(scorer, list(tgt["path"]))
    return {
        **scored("in_lab", test["label"], own, test["group"], classes),
        "in_lab_eval": "held-out test",
        "n_in": len(test),
        **scored("cross_lab", tgt["label"], other, tgt["group"], classes),
    }


def save(rows: list[dict[str, Any]], out: Path) -> pd.DataFrame:
    """Write ``rows`` to ``out``, keeping the rows of recipes this run did not redo (after each recipe,
    so a run cut short keeps what it measured)."""
    table = pd.DataFrame(rows)
    if out.exists():
        old = pd.read_csv(out)
        table = pd.concat([old[~old["key"].isin(table["key"])], table], ignore_index=True)
    table["order"] = table["key"].map({r.key: i for i, r in enumerate(RECIPES)})
    table = table.sort_values(["order", "direction"], kind="stable").drop(columns="order")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table


def run(recipes: Sequence[Recipe], data: Path, quick: bool, out: Path,
        sources: Sequence[str] = tuple(SETS)) -> pd.DataFrame:
    labs = load(data, quick)
    classes = sorted(set(labs["PBC"][0]["label"]))
    rows = []
    for r in recipes:
        for source, target in (("PBC", "DeepAPL"), ("DeepAPL", "PBC")):
            if source not in sources:
                continue
            src, tgt = labs[source][0], labs[target][0]
            t0 = time.perf_counter()
            res = (
                classical(r, src, tgt, classes, out.parent / "crosslab-cache")
                if r.family == "classical"
                else deep(r, src, tgt, classes, quick)
            )
            wall = time.perf_counter() - t0
            rows.append(
                {
                    "key": r.key,
                    "recipe": r.name,
                    "family": r.family,
                    "stage": r.stage,
                    "note": r.note,
                    "direction": f"{source} -> {target}",
                    **res,
                    "n_cross": len(tgt),
                    "wall_s": round(wall, 1),
                    "load": round(os.getloadavg()[0], 1),
                    "cores": os.cpu_count(),
                }
            )
            print(
                f"{r.name:55s} {source:>7s} -> {target:7s} in-lab {res['in_lab']:.3f}  "
                f"cross-lab {res['cross_lab']:.3f}  ({wall:.0f} s, load {rows[-1]['load']})",
                flush=True,
            )
        save(rows, out)
    return save(rows, out)


def main(argv: list[str] | None = None) -> int:
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["classical", "deep"], default=None, help="Only these recipes.")
    ap.add_argument(
        "--recipes",
        default=None,
        help="Comma-separated recipe keys (default: all): " + ", ".join(r.key for r in RECIPES),
    )
    ap.add_argument(
        "--quick", action="store_true", help="Smoke test: 12 cells a class, tiny network settings."
    )
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--source", choices=list(SETS), default=None,
                    help="Only the direction trained on this lab (default: both).")
    ap.add_argument("--out", type=Path, default=None, help="CSV (default benchmarks/results/crosslab.csv).")
    args = ap.parse_args(argv)
    out = args.out or HERE / "results" / ("quick" if args.quick else "") / "crosslab.csv"
    by_key = {r.key: r for r in RECIPES}
    wanted = args.recipes.split(",") if args.recipes else list(by_key)
    unknown = sorted(set(wanted) - set(by_key))
    if unknown:
        raise SystemExit(f"--recipes: unknown {unknown}; choose from {', '.join(by_key)}")
    chosen = [by_key[k] for k in wanted if args.family in (None, by_key[k].family)]
    sources = [args.source] if args.source else list(SETS)
    run(chosen, (args.data or data_root()).resolve(), args.quick, out, sources)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
