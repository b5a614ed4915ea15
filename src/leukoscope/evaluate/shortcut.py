"""The colour shortcut check: how far do colour statistics alone (no shape) get on this data set?

A logistic regression on the ``colour`` features (whole-image and background colour, see
``features.colour``) is a baseline every leaderboard, evaluation and EDA report shows beside its
own figures. When it comes close to the best model (``comparison``: within ``MARGIN``, or ``SHARE`` of
the way from chance to it), the report says in words that the data set may be separable by stain or
acquisition, not morphology: the model's score then shows little that colour could not. Its figure
carries the same 95% subject-bootstrap interval (``metrics.bootstrap_ci``) as the leaderboard's rows.

Where it is fitted: in the leaderboard, on the same folds as every model (``leaderboard`` runs it);
in ``evaluate``, on the train side of the bundle's own split where those images can be read, else
by grouped k-fold CV on the evaluated images (the report says which); in EDA, by grouped k-fold CV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.data.manifest import Manifest, label_indices, labelled
from leukoscope.errors import LeukoscopeError
from leukoscope.progress import SILENT, Progress

#: The row's name in every table; never a registered model, never "best", never saved.
LABEL = "colour shortcut (LR on colour statistics)"
#: The feature kind and the registered model the shortcut is made of.
FEATURES, MODEL = "colour", "logistic_regression"
#: Balanced accuracy within which a model of the shortcut has shown nothing colour could not show.
#: 0.05 is about half the width of a 95% subject-bootstrap interval on a few hundred cells (e.g.
#: ALL-IDB2's 260): a smaller gap is no evidence that the model uses the cell's morphology.
MARGIN = 0.05
#: Share of the best model's lead over chance (1 / classes, in balanced accuracy) that colour alone
#: may not reach: at three quarters of the way, most of what the model does colour already does,
#: whatever the absolute gap (on ALL-IDB2 colour reaches 0.92 against the best model's 0.99: 7 points
#: apart, yet 87% of the way from chance). With no model to compare (EDA) the reference is a perfect score.
SHARE = 0.75
WARNING = "the data set may be separable by stain or acquisition, not morphology"


@dataclass
class ShortcutFigure:
    """The shortcut's balanced accuracy, its 95% interval, and how it was obtained."""

    balanced_accuracy: float
    lo: float
    hi: float
    how: str
    n: int

    def text(self) -> str:
        return f"{self.balanced_accuracy:.3f} [{self.lo:.2f}, {self.hi:.2f}]"


def estimator(seed: int = 0) -> Any:
    """The unfitted shortcut pipeline (the registry's logistic regression: impute, scale, LR)."""
    from leukoscope.models.registry import get_model

    return get_model(MODEL).build(seed=seed)


def colour_matrix(m: Manifest, cache: Path | None = None, progress: Progress = SILENT) -> np.ndarray:
    """Colour features of every row of ``m`` in order; NaN rows where an image cannot be read
    (the pipeline imputes them, and a row the model could read still gets a shortcut call)."""
    from leukoscope.features import get_extractor
    from leukoscope.features.cache import extract_with

    frame, _ = extract_with(m.reset_index(drop=True), get_extractor(FEATURES), cache, progress=progress)
    return frame.reindex(range(len(m))).to_numpy(np.float32)


def comparison(shortcut: float | None, best: float | None, best_name: str, chance: float) -> str | None:
    """The warning when the shortcut is at least as high as ``best``, within ``MARGIN`` of it, or at
    least ``SHARE`` of the way from ``chance`` to it; None when the best model stays clear of colour."""
    if shortcut is None or best is None or np.isnan(shortcut) or np.isnan(best):
        return None
    if shortcut >= best:
        where = f"at least as high as {best_name} ({best:.3f})"
    elif best - shortcut <= MARGIN:
        where = f"within {MARGIN:g} of {best_name} ({best:.3f})"
    elif best > chance and shortcut - chance >= SHARE * (best - chance):
        where = (f"{(shortcut - chance) / (best - chance):.0%} of the way from chance ({chance:.2f}) to "
                 f"{best_name} ({best:.3f})")
    else:
        return None
    return f"colour statistics alone (no shape) reach balanced accuracy {shortcut:.3f}, {where}: {WARNING}"


def rule() -> str:
    """The warning rule in words, for the reports that show no warning."""
    return f"within {MARGIN:g} of the best model or {SHARE:.0%} of the way from chance to it"


def _figure(y: np.ndarray, pred: np.ndarray, groups: Sequence[Any], how: str, seed: int) -> ShortcutFigure:
    from leukoscope.evaluate.metrics import bootstrap_ci, label_figure

    k = int(max(y.max(initial=0), pred.max(initial=0))) + 1
    lo, hi = bootstrap_ci(y, pred, np.asarray(groups).astype(str), seed, metric="balanced_accuracy")
    return ShortcutFigure(label_figure(y, pred, k, "balanced_accuracy"), lo, hi, how, int(len(y)))


def cross_validated(m: Manifest, class_names: list[str], k: int = 5, seed: int = 0,
                    cache: Path | None = None) -> ShortcutFigure:
    """Out-of-fold shortcut figure on the labelled rows of ``m`` by grouped, stratified k-fold CV."""
    from sklearn.base import clone

    from leukoscope.data.splits import kfold, split_protocol

    split = kfold(labelled(m), k=k, seed=seed)
    X, y = colour_matrix(split, cache), np.asarray(label_indices(split, class_names))
    folds = split["fold"].to_numpy()
    pred = np.full(len(y), -1)
    for f in np.unique(folds):
        test = folds == f
        pred[test] = clone(estimator(seed)).fit(X[~test], y[~test]).predict(X[test])
    how = (f"{split['fold'].nunique()}-fold CV on these images, folds grouped "
           f"{'by subject' if split_protocol(split) == 'subject-grouped' else 'by image (no subject ids)'}")
    return _figure(y, pred, split["group"], how, seed)


def _training_side(bundle: Any, classes: list[str]) -> Manifest | None:
    """The labelled train-side rows of the bundle's split whose class the model knows, or None."""
    from leukoscope.data.rare import as_trained

    split = bundle.split()
    if split is None or "side" not in split or "label" not in split:
        return None
    train = split[split["side"] == "train"].copy()
    if "source_split" not in train:
        train["source_split"] = "train"
    train = as_trained(train, bundle.config)
    train = train[train["label"].isin(classes)].reset_index(drop=True)
    return train if train["label"].nunique() >= 2 else None


def for_evaluation(bundle: Any, m: Manifest, y: np.ndarray, model_figure: float | None, seed: int = 0,
                   cache: Path | None = None) -> dict[str, Any]:
    """The shortcut beside an evaluated model: fitted on the cells the bundle was trained on (its
    split's train side) when they can be read, else by grouped CV on ``m``; scored on the same rows
    ``m`` / ``y`` as the model, with the warning when close to ``model_figure`` (``comparison``)."""
    classes = list(bundle.classes)
    train = _training_side(bundle, classes)
    fig: ShortcutFigure | None = None
    why = "the bundle records no train side"
    if train is not None:
        Xt = colour_matrix(train, cache)
        readable = ~np.isnan(Xt).all(axis=1)
        if readable.sum() and len(set(train.loc[readable, "label"])) >= 2:
            pipe = estimator(seed).fit(Xt[readable], np.asarray(label_indices(train, classes))[readable])
            pred = pipe.predict(colour_matrix(m, cache))
            fig = _figure(np.asarray(y), pred, m["group"], f"fitted on the {int(readable.sum())} train-side "
                          "images of the bundle's split, scored on the evaluated images", seed)
        else:
            why = "the images of the bundle's train side cannot be read here"
    if fig is None:
        try:
            fig = cross_validated(m, classes, seed=seed, cache=cache)
        except LeukoscopeError as e:
            return {"label": LABEL, "figure": None, "how": f"not measured: {why}, and {e}", "warning": None}
        fig.how += f" ({why})"
    model = bundle.config.get("model", bundle.family)
    chance = 1 / len(np.unique(y))
    return {"label": LABEL, "figure": asdict(fig), "text": fig.text(), "how": fig.how, "rule": rule(),
            "model_balanced_accuracy": model_figure, "chance": chance,
            "warning": comparison(fig.balanced_accuracy, model_figure, f"the model {model}", chance)}


def for_eda(m: Manifest, seed: int = 0, cache: Path | None = None) -> dict[str, Any]:
    """The shortcut on a data set with no model yet: grouped CV on its labelled rows, the warning
    when it comes close to a perfect score (``comparison``; ``reason`` when unmeasurable)."""
    from leukoscope.data.manifest import classes as class_names

    names = class_names(m)
    try:
        fig = cross_validated(m, names, seed=seed, cache=cache)
    except LeukoscopeError as e:
        return {"label": LABEL, "figure": None, "reason": str(e), "warning": None}
    chance = 1 / len(names)
    warning = comparison(fig.balanced_accuracy, 1.0, "a perfect score", chance)
    return {"label": LABEL, "figure": asdict(fig), "text": fig.text(), "how": fig.how, "chance": chance,
            "rule": rule().replace("the best model", "a perfect score"), "warning": warning}


def baseline_last(table: Any) -> Any:
    """``table`` (sorted, failures last) with the shortcut row after the models that finished, so its
    first row stays the best model."""
    is_shortcut = table["model"] == LABEL
    rest = table[~is_shortcut]
    ok = int((rest["status"] == "ok").sum())
    return pd.concat([rest.iloc[:ok], table[is_shortcut], rest.iloc[ok:]], ignore_index=True)


def leaderboard_check(table: Any, n_classes: int) -> dict[str, Any] | None:
    """The shortcut row of a leaderboard table against its best model (by mean balanced accuracy)."""
    ok = table[table["status"] == "ok"]
    row = ok[ok["model"] == LABEL]
    models = ok[ok["model"] != LABEL]
    if row.empty:
        return None
    r = row.iloc[0]
    best = models.iloc[0] if not models.empty else None
    figure = float(r["balanced_accuracy_mean"])
    best_figure = None if best is None else float(best["balanced_accuracy_mean"])
    lo, hi = r.get("balanced_accuracy_lo"), r.get("balanced_accuracy_hi")
    return {"label": LABEL, "balanced_accuracy": figure, "lo": None if lo is None else float(lo),
            "hi": None if hi is None else float(hi), "rule": rule(),
            "best": None if best is None else str(best["model"]), "best_balanced_accuracy": best_figure,
            "warning": comparison(figure, best_figure, "the best model "
                                  + ("" if best is None else str(best["model"])), 1 / n_classes)}


def leaderboard_line(check: dict[str, Any]) -> str:
    """``leaderboard_check`` in words: the shortcut's figure, then the warning or why there is none."""
    figure = f"balanced accuracy {check['balanced_accuracy']:.3f}"
    if check.get("lo") is not None and not np.isnan(check["lo"]):
        figure += f" [{check['lo']:.2f}, {check['hi']:.2f}]"
    head = f"shortcut check: {check['label']} reaches {figure} on the same folds"
    if check["warning"]:
        return f"{head}. Warning: {check['warning']}"
    if check["best"] is None:
        return f"{head}; no model finished to compare it with"
    return (f"{head}, against {check['best_balanced_accuracy']:.3f} for the best model {check['best']}: "
            f"not {check['rule']}, so colour alone does not explain its score")
