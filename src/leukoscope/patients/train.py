"""``train_patients``: repeated patient-grouped CV of a patient method, then the ``patient`` bundle.

What ``leukoscope train COHORT --target COLUMN --out RUN`` runs. The figures in RUN/cv.json (and the
bundle's metrics.json) are the CV's, on patients each model never saw; the bundle itself is the method
refitted on every patient, with its setting, threshold and calibration chosen by an inner CV on them
all (the same procedure as inside each outer fold). RUN/patients.csv holds each patient's mean
out-of-fold score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.bundle import CARD, finish_bundle, writing_bundle
from leukoscope.bundle.format import UNFAMILIAR
from leukoscope.bundle.patient import WEIGHTS, save_weights
from leukoscope.data.manifest import Manifest
from leukoscope.errors import DataError
from leukoscope.io import write_csv_atomic, write_json_atomic
from leukoscope.models.patient.methods import get_method
from leukoscope.models.patient.scorers import CompositionScorer, Scorer, TypeHead, fit_type_head
from leukoscope.models.unfamiliar import Scorer as Unfamiliarity
from leukoscope.models.unfamiliar import fit_unfamiliar
from leukoscope.patients.bags import Bags, load_bags, shared_cells_warning
from leukoscope.patients.protocol import (
    FOLDS,
    REPEATS,
    figures,
    fit_nested,
    one_thread,
    out_of_fold,
    run_cv,
)
from leukoscope.progress import SILENT, Progress

#: The method ``train --target`` fits unless ``--model`` names another, chosen by benchmarks/patients.py:
#: the best patient AUC and the steadiest (smallest sd over repeats, highest lower bound of the interval,
#: lowest Brier), with the simplest aggregator (a mean of cell log-odds) and a strongly regularised,
#: nested-chosen C. See the README's patient-level table.
DEFAULT_METHOD = "cell-logodds"
PROTOCOL = "patient-level, repeated patient-grouped CV"
TASK = "patient-level diagnosis"
#: Share of each class's patients whose cells set the unfamiliarity threshold (the rest are the reference).
UNFAMILIAR_HELD_OUT = 0.2


def type_head(bags: Bags) -> TypeHead:
    """The cell-type head on every typed cell (a placeholder of one type when no cell is typed)."""
    typed = bags.types >= 0
    if len(np.unique(bags.types[typed])) < 2:
        raise DataError(f"{bags.cells['path'].iloc[0]}: a patient bundle needs cells of at least two "
                        "technologist-typed cell types (folders below the patient's) to learn cell types")
    return fit_type_head(bags.X[typed], bags.types[typed], len(bags.type_names))


def _split(bags: Bags) -> pd.DataFrame:
    return pd.DataFrame({"path": bags.cells["path"], "sha1": bags.cells["sha1"],
                         "subject": bags.cells["subject"],
                         "group": "subject:" + bags.cells["subject"].astype(str),
                         "label": np.array(bags.label_names())[bags.patient],
                         "cell_type": bags.cells["cell_type"], "side": "train"})


def card_section(config: dict[str, Any]) -> str:
    """What the generic model card lacks for a patient model: task, target, cohort, how it scores."""
    kind = config["aggregator"]["kind"]
    how = {
        "linear": "each cell's embedding x is standardised and scored s = ((x - mean) / scale) . coef + "
                  "intercept (tensors aggregator.*); the patient's decision is the mean of s over its cells",
        "composition": "each cell gets a type (the head aggregator.head.*, or the technologist's); the "
                       "patient's decision is a linear score of its type shares (aggregator.linear.*)",
        "mil": "gated attention MIL (aggregator.net.*) on the cells' projected embeddings "
               "(aggregator.mean/scale/components); decision = attention-weighted mean of cell logits",
    }[kind]
    a, b = config["platt"]
    return "\n".join([
        "", "## Patient-level diagnosis",
        f"- task: {TASK}: one call per patient from a bag of that patient's cells",
        f"- target column: {config['target']} (positive class: {config['positive']})",
        f"- cohort: {config.get('data', '-')}", f"- protocol: {PROTOCOL}",
        "- intended use: research only; not for diagnosis or treatment decisions",
        "", "## How a patient is scored",
        f"- cell embedding: {json.dumps(config['features'])}: the mean over the first `views` D4 views "
        "(2: the cell and its left-right mirror) of the network's pooled output (`leukoscope export --onnx` "
        "writes that network as model.onnx)",
        f"- aggregator ({config['model']}, {WEIGHTS}): {how}",
        f"- probability of {config['positive']}: sigmoid({a:.4f} * decision + {b:.4f}) (Platt, inner CV)",
        f"- call {config['positive']} when decision >= {config['threshold']:.4f} (Youden, inner CV); "
        f"no call below {config['min_cells']} cells",
    ] + ([f"- unfamiliar cells: kNN unfamiliarity ({UNFAMILIAR}, k = {config['unfamiliar']['k']}) above "
          f"{config['unfamiliar']['threshold']:.4f} (95th percentile on held-out patients' cells) are left "
          "out of the call and counted in the report"] if "unfamiliar" in config else [])) + "\n"


def fit_bundle(bags: Bags, model: str, seed: int = 0) -> tuple[Scorer, TypeHead, dict[str, Any]]:
    """The method refitted on every patient (setting, threshold, calibration by inner CV on them all),
    the cell-type head, and the bundle's config (``min_cells`` still to be set from the CV)."""
    final = fit_nested(get_method(model, seed=seed), bags, np.arange(len(bags.y)), seed)
    with one_thread():
        head = type_head(bags)
    if isinstance(final.scorer, CompositionScorer) and final.scorer.head is None:
        final.scorer.head = head  # new patients come without the technologist's types
    config = {"family": "patient", "model": model, "classes": bags.classes, "positive": bags.positive,
              "target": bags.target, "task": TASK, "protocol": PROTOCOL,
              "features": {"kind": "deep", "params": bags.features}, "aggregator": final.scorer.spec(),
              "setting": str(final.hyper), "inner_roc_auc": final.inner_auc, "threshold": final.threshold,
              "platt": list(final.platt), "min_cells": 1, "cell_types": bags.type_names, "temperature": 1.0}
    return final.scorer, head, config


def cell_unfamiliarity(bags: Bags, seed: int = 0) -> Unfamiliarity | None:
    """The unfamiliarity score of the bundle's cells (``models.unfamiliar``, kNN on the frozen embeddings).

    Patient-grouped, as a new patient's cells are scored: the reference is the cells of most patients,
    the threshold the 95th percentile of the scores of the cells of ``UNFAMILIAR_HELD_OUT`` of each class's
    patients it does not hold (a cell's nearest neighbours are mostly its own patient's, so a threshold
    on cells of reference patients would flag almost every new patient's cells). None when a class has
    fewer than two patients: no patient would be left to set the threshold.
    """
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in (0, 1):
        ids = np.flatnonzero(bags.y == c)
        if len(ids) < 2:
            return None
        held.append(rng.permutation(ids)[:max(1, round(UNFAMILIAR_HELD_OUT * len(ids)))])
    val = bags.rows(np.concatenate(held))
    ref = np.setdiff1d(np.arange(len(bags.X)), val)
    y = bags.y[bags.patient]
    return fit_unfamiliar(bags.X[ref], y[ref], bags.X[val], np.zeros((len(val), 2)), 1.0, method="knn",
                          seed=seed)


def train_patients(m: Manifest, target: str, out: Path, model: str = DEFAULT_METHOD,
                   positive: str | None = None, repeats: int = REPEATS, folds: int = FOLDS, seed: int = 0,
                   features: dict[str, Any] | None = None, cache: Path | None = None,
                   progress: Progress = SILENT) -> dict[str, Any]:
    """Cross-validate ``model`` on the cohort ``m`` and write RUN ``out`` (cv.json, patients.csv, bundle/)."""
    if repeats < 1:
        raise DataError(f"--repeats must be at least 1, got {repeats}")
    method = get_method(model, seed=seed)
    bags = load_bags(m, target, positive, features, cache, progress)
    run = run_cv(method, bags, folds, repeats, seed, progress)
    figs = figures(bags, run)
    scorer, head, config = fit_bundle(bags, model, seed)
    unfamiliar = cell_unfamiliarity(bags, seed)
    if unfamiliar is not None:
        config["unfamiliar"] = unfamiliar.config()
    config |= {"min_cells": int(figs["min_cells"]),
               "params": {"repeats": repeats, "folds": folds, "seed": seed},
               "data": ", ".join(sorted(set(m["dataset"].astype(str)))) if "dataset" in m else "-"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with writing_bundle(out / "bundle") as folder:
        save_weights(folder, scorer, head)
        if unfamiliar is not None:
            unfamiliar.save(folder / UNFAMILIAR)
        finish_bundle(folder, config, {"protocol": PROTOCOL, "patient": figs}, _split(bags))
        with open(folder / CARD, "a") as card:
            card.write(card_section(config))
    shared = shared_cells_warning(bags.cells)
    result = {"model": model, "target": bags.target, "classes": bags.classes, "positive": bags.positive,
              "protocol": PROTOCOL, **figs, "warnings": [shared] if shared else [],
              "skipped": [{"path": p, "reason": r} for p, r in bags.skipped],
              "bundle": str(out / "bundle")}
    write_json_atomic(out / "cv.json", result)
    write_csv_atomic(out / "patients.csv", out_of_fold(bags, run))
    return result
