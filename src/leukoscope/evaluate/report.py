"""``evaluate``: score a bundle on a labelled manifest; write metrics.json, predictions and report.html.

The report states the protocol and warns when it cannot vouch for the figures: no subject ids
(image-level), evaluated images that the model was trained or validated on (read from the
bundle's split.csv), or classes of the model absent from the evaluated images (averages then
cover the classes present). Calibration is shown before (T = 1) and after the bundle's temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.bundle import Bundle
from leukoscope.data.classes import shown_classes
from leukoscope.data.images import load_rgb
from leukoscope.data.manifest import (
    IMAGE_LEVEL_WARNING,
    Manifest,
    label_indices,
    labelled,
    protocol,
    skipped_files,
)
from leukoscope.data.rare import as_trained
from leukoscope.data.splits import NO_DEDUPE_WARNING, Split, apply_split, resolve_paths
from leukoscope.errors import DataError, ImageError
from leukoscope.evaluate import figures
from leukoscope.evaluate.calibration import ece, reliability
from leukoscope.evaluate.coverage import coverage_figure, coverage_section
from leukoscope.evaluate.crosslab import crosslab_section
from leukoscope.evaluate.intervals import with_intervals
from leukoscope.evaluate.metrics import curves, evaluation_metrics
from leukoscope.evaluate.operating import evaluate_operating_point
from leukoscope.evaluate.shortcut import for_evaluation
from leukoscope.io import write_csv_atomic, write_json_atomic
from leukoscope.predict.adapt import adapt_to
from leukoscope.predict.local import scored_batches
from leukoscope.predict.tta import proba_from_views
from leukoscope.predict.unfamiliar import UNFAMILIAR
from leukoscope.progress import SILENT, Progress

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
PREDICTIONS_FILE = "predictions.csv"
#: With a class map: the in-lab vs cross-lab figures alone (also under ``crosslab`` in metrics.json).
CROSSLAB_FILE = "crosslab.json"
GALLERY_SIZE = 12


def score_paths(bundle: Bundle, paths: Sequence[str], batch_size: int = 64, tta: bool = False,
                progress: Progress = SILENT, unfamiliarity: list[np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Logits per view for every readable path: (indices of readable paths, logits, skipped); the
    bundle's unfamiliarity scores are appended to ``unfamiliarity`` when given."""
    index = {p: i for i, p in enumerate(paths)}
    ok: list[int] = []
    parts: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    advance = progress.task("scoring", len(paths))
    for good, views, scores, bad in scored_batches(bundle, map(Path, paths), batch_size, tta):
        skipped += bad
        if good:
            parts.append(views)
            if unfamiliarity is not None and scores is not None:
                unfamiliarity.append(scores)
            ok += [index[str(p)] for p in good]
        advance(len(good) + len(bad))
    progress.done("scoring")
    k = len(bundle.classes)
    logits = np.concatenate(parts) if parts else np.zeros((0, 8 if tta else 1, k))
    return np.asarray(ok, int), logits, skipped


def on_side(bundle: Bundle, m: Manifest, side: str, split: Split | None = None) -> Manifest:
    """Rows of ``m`` that sit on ``side`` of ``split`` (a split file, laid over ``m`` by
    ``data.splits.apply_split``), else of the split the bundle was trained with (its paths found among
    ``m``'s when the data folder moved)."""
    if split is not None:
        split, where = apply_split(m, split), split.attrs.get("source", "--split")
    else:
        split, where = bundle.split(present=m["path"]), f"{bundle.path}/split.csv"
        if split is None or "side" not in split:
            raise DataError(f"{bundle.path}: bundle has no train/val/test split.csv; --side needs one")
    if "side" not in split:
        raise DataError(f"{where}: a k-fold split has no sides; --side needs train / val / test")
    sides = sorted(split["side"].dropna().unique())
    if side not in sides:
        raise DataError(f"--side {side!r}: {where} has sides {', '.join(sides)}")
    keep = set(resolve_paths(split.loc[split["side"] == side, "path"].astype(str), m["path"].astype(str)))
    sub = m[m["path"].isin(keep)].reset_index(drop=True)
    if sub.empty:
        raise DataError(f"none of the given images is on the {side!r} side of {where}")
    return sub


def training_overlap(bundle: Bundle, paths: Sequence[str]) -> dict[str, int]:
    """How many evaluated images sit on each side of the bundle's own split (train/val = optimistic)."""
    split = bundle.split(present=paths)
    col = "side" if split is not None and "side" in split else "fold" if split is not None else None
    if split is None or col is None:
        return {}
    sides = split.set_index("path")[col].astype(str)
    hits = sides.reindex(list(paths)).dropna()
    return {str(k): int(v) for k, v in hits.value_counts().items()}


def _warnings(m: Manifest, overlap: dict[str, int], side: str | None, classes: Sequence[str],
              absent: Sequence[str]) -> list[str]:
    out = []
    if absent:
        out.append(f"{len(absent)} of the model's {len(classes)} classes are absent from the evaluated "
                   f"images ({', '.join(absent)}): macro figures average the {len(classes) - len(absent)} "
                   "present, and an absent class has no recall")
    if protocol(m) == "image-level":
        out.append(IMAGE_LEVEL_WARNING + "; no subject-level figures")
    seen = {k: v for k, v in overlap.items() if k in ("train", "val")}
    # on any side but the bundle's own validation side (said below): also a side of --split FILE, or
    # --side train
    if seen and not (side == "val" and set(seen) == {"val"}):
        desc = ", ".join(f"{v} on its {k} side" for k, v in seen.items())
        out.append(f"{sum(seen.values())} evaluated image(s) were used to build this model ({desc}): "
                   "figures on them are optimistic; use --side test")
    if "val" in seen and side == "val":
        out.append("the validation side chose the epoch and the temperature: figures are optimistic")
    return out


def _gallery(paths: Sequence[str], y: np.ndarray, probs: np.ndarray, classes: Sequence[str]
             ) -> list[dict[str, Any]]:
    """The most confident mistakes, as embedded thumbnails."""
    from leukoscope.reports.html import image_to_data_uri

    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    items = []
    for i in wrong[np.argsort(-conf[wrong], kind="stable")][:GALLERY_SIZE]:
        try:
            uri = image_to_data_uri(load_rgb(paths[i]))
        except ImageError:
            continue
        items.append({"uri": uri, "name": Path(paths[i]).name, "true": classes[y[i]],
                      "predicted": classes[pred[i]], "confidence": float(conf[i])})
    return items


def _write_predictions(path: Path, m: Manifest, y: np.ndarray, probs: np.ndarray,
                       classes: Sequence[str], called: np.ndarray, unf: np.ndarray | None,
                       flags: np.ndarray | None) -> None:
    """One row per evaluated cell: ``predicted`` is the class the figures score (the most probable;
    every cell gets one), ``call`` what ``predict`` and the page say of it (``called``: an operating
    point's class where the bundle has one; ``unfamiliar`` where the score ``flags`` the cell)."""
    df = pd.DataFrame({"path": m["path"], "subject": m["subject"], "label": [classes[i] for i in y],
                       "predicted": [classes[i] for i in probs.argmax(axis=1)]})
    df["correct"] = df["label"] == df["predicted"]
    df["call"] = [classes[i] for i in called]
    for i, c in enumerate(classes):
        df[f"p_{c}"] = probs[:, i]
    if unf is not None and flags is not None:
        df["unfamiliarity"], df["unfamiliar"] = unf, flags
        df.loc[df["unfamiliar"], "call"] = UNFAMILIAR
    write_csv_atomic(path, df)


def evaluate(bundle: Bundle, m: Manifest, out: Path, tta: bool = False, side: str | None = None,
             batch_size: int = 64, progress: Progress = SILENT, split: Split | None = None,
             class_map: dict[str, Any] | None = None, adapt: bool = False) -> dict[str, Any]:
    """Score ``bundle`` on the labelled rows of ``m`` (optionally one ``side`` of its split, or of
    ``split``, a split file: its test side unless ``side`` says another), the classes it merged or
    dropped as rare merged or dropped here too.

    Writes ``metrics.json``, ``predictions.csv``, ``report.html`` and its figures (PNG + SVG) into ``out``;
    returns the metrics dict. Unreadable images are skipped and listed under ``skipped``; files the
    readers of ``m`` left out (``data.manifest.skipped_files``) under ``left_out``. With ``class_map``
    (what the map applied to ``m`` did, ``ClassMap.counts``): the bundle's in-lab figures beside these,
    under ``crosslab`` and in ``crosslab.json``. With ``adapt``: the bundle is first adapted to these cells
    (``predict.adapt``), recorded under ``adapted``.
    """
    from leukoscope.reports.html import save_figure, write_report

    out = Path(out)
    classes = bundle.classes
    left_out = skipped_files(m)
    m = as_trained(labelled(m), bundle.config)  # the classes the model was trained on
    if split is not None and side is None:
        side = "test"
    if side is not None:
        m = on_side(bundle, m, side, split)
    if m.empty:
        raise DataError("no labelled images to evaluate")
    y_all = np.asarray(label_indices(m, classes), int)
    if adapt:
        bundle = adapt_to(bundle, list(m["path"]), batch_size, progress)
    unfamiliarity: list[np.ndarray] = []
    ok, logits, skipped = score_paths(bundle, list(m["path"]), batch_size, tta, progress, unfamiliarity)
    if len(ok) == 0:
        raise DataError(f"none of the {len(m)} images could be read")
    m, y = m.iloc[ok].reset_index(drop=True), y_all[ok]
    temperature = bundle.temperature
    before, probs = proba_from_views(logits, 1.0), proba_from_views(logits, temperature)
    overlap = training_overlap(bundle, list(m["path"]))
    scores = with_intervals(evaluation_metrics(y, probs, classes, list(m["subject"])), y, probs,
                            list(m["subject"]))
    op = bundle.operating_point
    unf = np.concatenate(unfamiliarity) if unfamiliarity else None
    result: dict[str, Any] = {
        "bundle": str(bundle.path), "model": bundle.config.get("model", bundle.family),
        "family": bundle.family, "classes": classes, "display_names": bundle.display_names, "tta": tta,
        "side": side,
        "side_of": None if side is None else split.attrs.get("source", "--split") if split is not None
        else "the bundle's split",
        "protocol": protocol(m), "trained_with": bundle.config.get("protocol"),
        "warnings": _warnings(m, overlap, side, classes, scores["cell"]["absent_classes"])
        + ([scores["too_small"]] if scores["too_small"] else [])
        + ([f"the model's own {NO_DEDUPE_WARNING}"] if bundle.config.get("dedupe") is False else [])
        + ([bundle.adaptation["warning"]] if bundle.adaptation and "warning" in bundle.adaptation else []),
        "overlap_with_training_split": overlap,
        "images": int(len(y_all)), "evaluated": int(len(y)),
        **({"rare_classes": bundle.config["rare_classes"]} if bundle.config.get("rare_classes") else {}),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "left_out": [{"path": p, "reason": r} for p, r in left_out],
        **scores,
        **({"operating_point": evaluate_operating_point(op, y, probs, classes, list(m["subject"]))}
           if op else {}),
        "calibration": {"temperature": temperature, "ece_before": ece(before, y), "ece_after": ece(probs, y),
                        "reliability_before": reliability(before, y),
                        "reliability_after": reliability(probs, y)},
        "unfamiliar": coverage_section(y, probs, unf, bundle.unfamiliar, bundle.decide(probs)),
        "adapted": bundle.adaptation,
    }
    # the colour shortcut beside the model; its warning is about the data set, not about what makes these
    # figures optimistic (``warnings``), so the report shows it in its own section, under the headline figures
    result["shortcut"] = for_evaluation(bundle, m, y, scores["cell"]["balanced_accuracy"])
    out.mkdir(parents=True, exist_ok=True)
    if class_map is not None and not overlap:  # the bundle's own lab's cells are not cross-lab
        per_label = {classes[k]: int(n) for k, n in enumerate(np.bincount(y, minlength=len(classes))) if n}
        result["crosslab"] = crosslab_section(bundle.metrics(), scores["cell"], per_label, class_map)
        write_json_atomic(out / CROSSLAB_FILE, result["crosslab"])
    write_json_atomic(out / METRICS_FILE, result)
    flags = bundle.unfamiliar.flag(unf) if bundle.unfamiliar is not None and unf is not None else None
    _write_predictions(out / PREDICTIONS_FILE, m, y, probs, classes, bundle.decide(probs), unf, flags)
    cal = result["calibration"]
    history = bundle.history()
    roc_pr = curves(y, probs, classes)
    shown = shown_classes(classes, bundle.display_names)
    figs = {  # each also saved beside report.html as <name>.png and <name>.svg
        "confusion": figures.confusion_figure(result["cell"]["confusion_matrix"], list(shown.values())),
        "roc": figures.roc_figure(roc_pr),
        "pr": figures.pr_figure(roc_pr),
        "reliability": figures.reliability_figure(cal["reliability_before"], cal["reliability_after"],
                                                  cal["ece_before"], cal["ece_after"], temperature),
        "training_curves": figures.history_figure(history) if history is not None else None,
        "coverage": coverage_figure(result["unfamiliar"]),
    }
    write_report(out / REPORT_FILE, "evaluate.html",
                 title=f"Evaluation: {result['model']} on {len(y)} images",
                 protocol=_protocol_text(result), warning=" ".join(result["warnings"]), r=result, shown=shown,
                 figs={k: save_figure(f, out / f"{k}.png") for k, f in figs.items() if f is not None},
                 gallery=_gallery(list(m["path"]), y, probs, classes))
    return result


def _protocol_text(r: dict[str, Any]) -> str:
    where = f"{r['side']} side of {r.get('side_of') or 'the bundle split'}" if r["side"] else "given images"
    trained = f"; model trained on a {r['trained_with']} split" if r["trained_with"] else ""
    adapted = (f"; model adapted to these {r['adapted']['cells']} cells, no labels ({r['adapted']['how']})"
               if r.get("adapted") else "")
    return f"{r['protocol']} ({where}){trained}{adapted}"
