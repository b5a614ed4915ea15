"""Unfamiliarity scores compared: does a bundle know a cell it has no business calling?

    python benchmarks/unfamiliar.py [--pairs pbc-deepapl,allidb2-cnmc,aria_all-pbc] [--runs DIR]
                                    [--max-foreign N] [--epochs N] [--img-size PX]
                                    [--quick] [--out FILE]

For each pair, a model is trained on the first data set with the default recipe
(``leukoscope train DATA --model efficientnet_lite0``; reused when its run folder is finished), then
every method of ``leukoscope.models.unfamiliar`` (msp, energy, class-conditional and relative Mahalanobis,
kNN with k = 1, 5, 10 on L2-normalised penultimate features) is fitted on the same embeddings of the run's
train side, thresholded at the 95th percentile of its validation side, and scored on the held-out test
side (familiar) and on the foreign cells. Candidates beyond what a network bundle stores: the same scores
on handcrafted features (nucleus size, chromatin texture), on both side by side, and the mean of two
scores as ranks among the validation cells (``COMBINED``). Embeddings and features are cached in the run
folder (``embeddings-*.npz``), so methods are compared again in seconds:

- ``pbc-deepapl``: DeepAPL's blasts ("Blast, no lineage spec" folders) against DeepAPL's cells of the
  eight PBC-mapped types (the AUC asked for: both from the new lab, so stain alone cannot separate them);
- ``allidb2-cnmc``: every C-NMC cell (cnmc_sample + cnmc_cells) against ALL-IDB2's test side;
- ``aria_all-pbc``: every PBC cell against aria_all's test side.

Per method: ROC AUC (foreign vs familiar, higher score = foreign) with its 95 % interval (bootstrap over
whole patients where the cells have them, DeepAPL's; over cells otherwise), share of foreign cells flagged
and of familiar test cells flagged at the validation threshold; per model: test macro-F1 and accuracy.
For ``pbc-deepapl`` also, per DeepAPL cell type, the shipped score's AUC of the blasts against that type,
and a **supervised ceiling**: a logistic regression taught DeepAPL's own blasts against its known types in
the same embedding (5-fold CV grouped by patient, its C chosen by inner grouped CV), which no detector
fitted on PBC alone can be expected to beat; and the score ``train --outliers`` fits (``exposure``,
``OUTLIERS``: ALL-IDB2's blasts, its normal cells as familiar cells of their lab), on the same model (the
network trains the same with or without outliers; only the score differs).
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
#: (feature space, method, k): ``embedding`` is the bundle's own (what it stores), ``handcrafted`` the
#: 83 morphology features, ``both`` the two side by side (each column standardised on the train side).
METHODS = (("embedding", "msp", 1), ("embedding", "energy", 1), ("embedding", "mahalanobis", 1),
           ("embedding", "relative_mahalanobis", 1), ("embedding", "knn", 1), ("embedding", "knn", 5),
           ("embedding", "knn", 10), ("handcrafted", "mahalanobis", 1), ("handcrafted", "knn", 5),
           ("both", "mahalanobis", 1), ("both", "knn", 5))
SPACE_NAMES = {"embedding": "", "handcrafted": " on handcrafted", "both": " on embedding + handcrafted"}
#: Pairs of METHODS rows whose scores are also averaged (as ranks among the familiar validation cells).
COMBINED = ((("embedding", "mahalanobis", 1), ("handcrafted", "mahalanobis", 1)),
            (("embedding", "relative_mahalanobis", 1), ("handcrafted", "knn", 5)))
#: The outliers ``train --outliers DATA --outlier-class CLASS`` is given, per pair that measures them.
OUTLIERS = {"pbc-deepapl": ("allidb2", "all")}
EXPOSURE = "exposure (--outliers allidb2 --outlier-class all)"
SEED = 0
BOOT = 1000  # bootstrap resamples per interval
CEILING_C = (1e-4, 1e-3, 1e-2, 1e-1)  # the supervised ceiling's regularisation grid


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


def embed(bundle: Any, paths: list[str]) -> tuple[np.ndarray, ...]:
    """Logits, the bundle's embedding and handcrafted features (nucleus size, chromatin texture: the
    morphology that tells a blast apart, whatever the network learned) of each readable cell, and the
    paths of those cells (an unreadable one is left out)."""
    from leukoscope.batches import chunks
    from leukoscope.data.images import load_batch
    from leukoscope.features import get_extractor

    hand = get_extractor("handcrafted")
    logits, embs, hcs, kept = [], [], [], []
    for chunk in chunks(paths, 64):
        ok, images, _ = load_batch(chunk)
        if images:
            lg, em = bundle.embed_logits(images)
            logits.append(lg)
            embs.append(em)
            hcs.append(hand.compute(images))
            kept += ok
    return np.concatenate(logits), np.concatenate(embs), np.concatenate(hcs), np.array(kept, dtype=str)


PARTS = ("logits", "emb", "hand", "paths")


def embedded(bundle: Any, sets: dict[str, list[str]], cache: Path) -> dict[str, tuple[np.ndarray, ...]]:
    """``embed`` of every set, cached next to the run (keyed on the bundle's weights and the paths), so
    methods can be compared again without recomputing the network's features."""
    import hashlib

    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(bundle.path).iterdir())
    key = hashlib.sha1(repr((weights, sorted(sets.items()), PARTS)).encode()).hexdigest()[:16]
    f = cache / f"embeddings-{key}.npz"
    if f.exists():
        z = np.load(f)
        return {k: tuple(z[f"{k}.{n}"] for n in PARTS) for k in sets}
    got = {k: embed(bundle, v) for k, v in sets.items()}
    np.savez(f, **{f"{k}.{n}": a for k, v in got.items() for n, a in zip(PARTS, v, strict=True)})
    return got


def auc(familiar: np.ndarray, foreign: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(familiar)), np.ones(len(foreign))]
    return float(roc_auc_score(y, np.r_[familiar, foreign]))


def subject(path: str) -> str:
    """A cell's patient (DeepAPL's ``Patient_XX`` folder), or the cell itself where there is none."""
    return next((part for part in Path(path).parts if part.startswith("Patient_")), path)


def auc_interval(familiar: np.ndarray, foreign: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """95 % interval of ``auc`` over resamples of whole ``groups`` (familiar rows first, then foreign)."""
    from sklearn.metrics import roc_auc_score

    from leukoscope.evaluate.metrics import group_resamples, percentile_interval

    y = np.r_[np.zeros(len(familiar)), np.ones(len(foreign))]
    s = np.r_[familiar, foreign]
    return percentile_interval([roc_auc_score(y[i], s[i]) for i in group_resamples(groups, SEED, BOOT)
                                if 0 < y[i].sum() < len(i)])


def ceiling(known: np.ndarray, blasts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Out-of-fold blast scores of a logistic regression taught the blasts (``known`` rows first): 5-fold
    CV grouped by patient, C chosen per fold by the AUC of an inner grouped 4-fold CV on its training
    patients, classes weighted equally."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.r_[known, blasts]
    y = np.r_[np.zeros(len(known), int), np.ones(len(blasts), int)]

    def fitted(c: float, rows: np.ndarray) -> Any:
        lr = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
        return make_pipeline(StandardScaler(), lr).fit(x[rows], y[rows])

    def oof(rows: np.ndarray, c: float | None, k: int) -> np.ndarray:
        out = np.empty(len(rows))
        cv = StratifiedGroupKFold(k, shuffle=True, random_state=SEED)
        for tr, te in cv.split(x[rows], y[rows], groups[rows]):
            best = c if c is not None else max(CEILING_C, key=lambda v: roc_auc_score(
                y[rows[tr]], oof(rows[tr], v, 4)))
            out[te] = fitted(best, rows[tr]).decision_function(x[rows[te]])
        return out

    return oof(np.arange(len(y)), None, 5)


def by_type(score: np.ndarray, blast_score: np.ndarray, types: np.ndarray, groups: np.ndarray,
            blast_groups: np.ndarray) -> dict[str, dict[str, float]]:
    """AUC [interval] of the blasts' ``blast_score`` against each known type's ``score``."""
    out = {}
    for t in sorted(set(types)):
        pick = types == t
        lo, hi = auc_interval(score[pick], blast_score, np.r_[groups[pick], blast_groups])
        out[str(t)] = {"n": int(pick.sum()), "auc": auc(score[pick], blast_score), "auc_lo": lo, "auc_hi": hi}
    return out


def space_of(v: tuple[np.ndarray, ...], space: str, train: tuple[np.ndarray, ...]) -> np.ndarray:
    """The rows of one feature space (handcrafted NaNs, unmeasurable features, get the train median)."""
    hand = np.where(np.isnan(v[2]), np.nanmedian(train[2], axis=0), v[2])
    hand = np.nan_to_num(hand)
    return {"embedding": v[1], "handcrafted": hand, "both": np.hstack([v[1], hand])}[space]


def label(m: tuple[str, str, int]) -> str:
    return f"{m[1] if m[1] != 'knn' else f'knn (k={m[2]})'}{SPACE_NAMES[m[0]]}"


def combined(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mean of two scores, each as its rank among the familiar validation cells' (0-1)."""
    def rank(s: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.sort(s["val"]), x, side="right") / len(s["val"])

    return {n: (rank(a, a[n]) + rank(b, b[n])) / 2 for n in a}


def row(name: str, score: dict[str, np.ndarray], threshold: float, familiar: str,
        groups: dict[str, np.ndarray]) -> dict[str, Any]:
    flag = {n: float((v > threshold).mean()) for n, v in score.items()}
    lo, hi = auc_interval(score[familiar], score["foreign"], np.r_[groups[familiar], groups["foreign"]])
    return {"method": name, "auc": auc(score[familiar], score["foreign"]), "auc_lo": lo, "auc_hi": hi,
            "auc_vs_test": auc(score["test"], score["foreign"]),
            "foreign_flagged": flag["foreign"], "test_flagged": flag["test"],
            **({"new_lab_known_flagged": flag["new_lab_known"]} if "new_lab_known" in score else {})}


def train_run(name: str, data: Path, runs: Path, quick: bool, recipe: dict[str, int]) -> Any:
    from leukoscope.bundle import load_bundle
    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    model = "leukonet" if quick else "efficientnet_lite0"
    settings = {"epochs": 2, "img_size": 32} if quick else recipe
    cfg = TrainConfig.build(model=model, **settings)
    out = runs / "-".join([name, model, *(f"{k}{v}" for k, v in sorted(recipe.items()) if not quick)])
    train(read([data / name]), cfg, out)
    return load_bundle(out / "bundle", runtime="torch")


def exposure_scores(bundle: Any, data: Path, runs: Path, outliers: tuple[str, str],
                    got: dict[str, tuple[np.ndarray, ...]], y_train: np.ndarray
                    ) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """The ``exposure`` scorer ``train --outliers`` fits for ``bundle`` (the same function, on the same
    sides of the outliers), its score on every set of ``got``, and its figures on the held-out outliers."""
    from leukoscope.train.outliers import read_outliers
    from leukoscope.train.unfamiliar import exposure

    name, cls = outliers
    folder = runs / f"outliers-{name}-{cls}"
    folder.mkdir(parents=True, exist_ok=True)
    m = read_outliers(str(data / name), cls, bundle.split(), SEED)
    emb = embedded(bundle, {"outliers": list(m["path"])}, folder)["outliers"]
    m = m.set_index("path").loc[list(emb[3])].reset_index()  # the cells that decoded, in their order
    scorer, figures = exposure(got["train"][1], y_train, (got["val"][1], got["val"][0]),
                               (got["test"][1], got["test"][0]), bundle.temperature, m, (emb[1], emb[0]),
                               (str(data / name), cls))
    return scorer, {k: scorer.score(v[1], v[0]) for k, v in got.items()}, figures


def measure(pair: str, data: Path, runs: Path, max_foreign: int, quick: bool,
            recipe: dict[str, int]) -> dict[str, Any]:
    from leukoscope.evaluate.metrics import classification_metrics
    from leukoscope.models.unfamiliar import fit_scorer, set_threshold
    from leukoscope.probability import softmax_t

    trained = pair.split("-")[0]
    t0 = time.perf_counter()
    bundle = train_run(trained, data, runs, quick, recipe)
    split = bundle.split()
    side = {s: list(split.loc[split["side"] == s, "path"]) for s in ("train", "val", "test")}
    y_of = dict(zip(split["path"], split["label"], strict=True))
    sets = {k: [str(p) for p in spread(v, max_foreign)] for k, v in foreign_sets(pair, data).items()}
    got = embedded(bundle, side | sets, runs)
    groups = {name: np.array([subject(p) for p in v[3]]) for name, v in got.items()}
    classes = bundle.classes
    y_train, y_test = (np.asarray([classes.index(y_of[p]) for p in got[s][3]]) for s in ("train", "test"))
    probs = softmax_t(got["test"][0], bundle.temperature)  # stable: confident logits overflow a plain exp
    test = classification_metrics(y_test, probs, classes)
    familiar = "new_lab_known" if "new_lab_known" in got else "test"
    rows, scored = [], {}
    for space, method, k in METHODS:
        feats = {name: space_of(v, space, got["train"]) for name, v in got.items()}
        s = fit_scorer(feats["train"], y_train, method, k=k, temperature=bundle.temperature,
                       standardise=space != "embedding")
        set_threshold(s, s.score(feats["val"], got["val"][0]))
        score = {name: s.score(feats[name], lg) for name, (lg, *_) in got.items()}
        scored[(space, method, k)] = score
        rows.append(row(label((space, method, k)), score, s.threshold, familiar, groups))
    for a, b in COMBINED:
        score = combined(scored[a], scored[b])
        rows.append(row(f"rank mean of {label(a)} and {label(b)}", score,
                        float(np.quantile(score["val"], 0.95)), familiar, groups))
    exposed = None
    if pair in OUTLIERS:
        scorer, exposed, figures = exposure_scores(bundle, data, runs, OUTLIERS[pair], got, y_train)
        rows.append(row(EXPOSURE, exposed, scorer.threshold, familiar, groups) | {"outliers": figures})
    shipped = bundle.config["unfamiliar"]
    extra = {}
    if familiar == "new_lab_known":  # where the blasts are lost, and how far labels would get
        types = np.array([Path(p).parent.name for p in got["new_lab_known"][3]])
        score = scored[("embedding", shipped["method"], shipped["k"] if shipped["method"] == "knn" else 1)]
        both = np.r_[groups[familiar], groups["foreign"]]
        taught = ceiling(got["new_lab_known"][1], got["foreign"][1], both)
        taught_known, taught_blast = taught[: len(types)], taught[len(types):]
        lo, hi = auc_interval(taught_known, taught_blast, both)
        extra = {"ceiling": {"auc": auc(taught_known, taught_blast), "auc_lo": lo, "auc_hi": hi},
                 "by_type": {"shipped": by_type(score[familiar], score["foreign"], types, groups[familiar],
                                                groups["foreign"]),
                             "ceiling": by_type(taught_known, taught_blast, types, groups[familiar],
                                                groups["foreign"])}}
        if exposed is not None:
            extra["by_type"]["exposure"] = by_type(exposed[familiar], exposed["foreign"], types,
                                                   groups[familiar], groups["foreign"])
    return {"pair": pair, "model": bundle.config["model"], "bundle": str(bundle.path),
            "familiar_for_auc": familiar, "n": {k: int(len(v[0])) for k, v in got.items()},
            "test_f1_macro": test["f1_macro"], "test_accuracy": test["accuracy"],
            "bundle_method": bundle.config.get("unfamiliar", {}).get("method"),
            "seconds": time.perf_counter() - t0, "methods": rows, **extra}


#: Trained on -> shown, as the README names each pair.
PAIR_TITLES = {"pbc-deepapl": "PBC → DeepAPL blasts", "allidb2-cnmc": "ALL-IDB2 → C-NMC",
               "aria_all-pbc": "aria_all → PBC"}
#: The methods the README compares (the bundle's own embedding; the rest stay in the JSON).
README_METHODS = ("msp", "energy", "mahalanobis", "relative_mahalanobis", "knn (k=5)", EXPOSURE)


def frames(doc: dict[str, Any]) -> tuple[Any, Any]:
    """The README's two tables as frames (results/unfamiliar.csv, unfamiliar_types.csv): per pair and
    method, AUC [interval] and the shares flagged; per DeepAPL cell type, the blasts' AUC against it by
    the shipped score and by the supervised ceiling (first row: every known type)."""
    import pandas as pd

    methods, types = [], []
    for r in doc["results"]:
        familiar = r["familiar_for_auc"]
        for m in r["methods"]:
            if m["method"] in README_METHODS:
                methods.append({"pair": PAIR_TITLES[r["pair"]], "method": m["method"],
                                "shipped": m["method"] == r["bundle_method"],
                                "test_f1_macro": r["test_f1_macro"], "n_foreign": r["n"]["foreign"],
                                "n_familiar": r["n"][familiar], "familiar": familiar,
                                **{k: m[k] for k in ("auc", "auc_lo", "auc_hi", "foreign_flagged")},
                                "familiar_flagged": m[f"{familiar}_flagged"], "wall_s": r["seconds"]})
        if "ceiling" in r:
            shipped = next(m for m in r["methods"] if m["method"] == r["bundle_method"])
            exposed = next((m for m in r["methods"] if m["method"] == EXPOSURE), {})
            keys = ("auc", "auc_lo", "auc_hi")
            types.append({"type": "every known type", "n": r["n"][familiar], **{k: shipped[k] for k in keys},
                          **{f"ceiling_{k}": v for k, v in r["ceiling"].items()},
                          **{f"exposure_{k}": exposed[k] for k in keys if k in exposed}})
            by = r["by_type"]
            for t, v in by["shipped"].items():
                others = [o for o in ("ceiling", "exposure") if o in by]
                types.append({"type": t, **v, **{f"{o}_{k}": by[o][t][k] for o in others for k in keys}})
    return pd.DataFrame(methods), pd.DataFrame(types)


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
    ap.add_argument("--epochs", type=int, default=None, help="Instead of the recipe's (a better model?).")
    ap.add_argument("--img-size", type=int, default=None, help="Instead of the recipe's 128 px.")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "unfamiliar.json")
    a = ap.parse_args()
    pairs = [p for p in a.pairs.split(",") if p]
    unknown = sorted(set(pairs) - set(PAIRS))
    if unknown:
        raise SystemExit(f"--pairs: unknown {', '.join(unknown)}; choose from {', '.join(PAIRS)}")
    max_foreign = min(a.max_foreign, 40) if a.quick else a.max_foreign
    recipe = {k: v for k, v in (("epochs", a.epochs), ("img_size", a.img_size)) if v}
    results = [measure(p, a.data, a.runs, max_foreign, a.quick, recipe) for p in pairs]
    load = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"results": results, "load_average": load, "cores": os.cpu_count(),
                                 "quick": a.quick}, indent=2))
    print(markdown(results, load))


if __name__ == "__main__":
    main()
