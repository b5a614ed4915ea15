"""Matplotlib figures of an evaluation: confusion matrix, ROC / PR curves, reliability, history.

Each function takes the JSON-ready figures of ``evaluate.metrics`` / ``calibration`` (not the raw
predictions), so a report can be redrawn from metrics.json alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> Any:
    """Counts, shaded by the row (true-class) fraction so small classes stay readable."""
    plt = _plt()
    cm_arr = np.asarray(cm, float)
    rows = cm_arr / np.maximum(cm_arr.sum(axis=1, keepdims=True), 1)
    side = 1.2 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm_arr[i, j])}\n{rows[i, j]:.0%}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    return fig


def roc_figure(curves: dict[str, dict[str, Any]]) -> Any:
    """One-vs-rest ROC curves, one line per class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for c, cv in curves.items():
        ax.plot(cv["fpr"], cv["tpr"], label=f"{c} (AUC {cv['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
    _finish(ax, bool(curves), "lower right")
    return fig


def pr_figure(curves: dict[str, dict[str, Any]]) -> Any:
    """One-vs-rest precision-recall curves, one line per class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for c, cv in curves.items():
        ax.plot(cv["recall"], cv["precision"], drawstyle="steps-post",
                label=f"{c} (AP {cv['average_precision']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (one vs rest)", ylim=(0, 1.02))
    _finish(ax, bool(curves), "lower left")
    return fig


def _finish(ax: Any, legend: bool, loc: str) -> None:
    if legend:  # no lines when the data hold one class: no legend (and no matplotlib warning)
        ax.legend(fontsize=8, loc=loc)
    ax.grid(alpha=0.3)


def reliability_figure(before: list[dict], after: list[dict], ece_before: float | None,
                       ece_after: float | None, temperature: float) -> Any:
    """Accuracy against confidence per bin, before (T=1) and after temperature scaling."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, bins, name, e in ((axes[0], before, "before (T = 1)", ece_before),
                              (axes[1], after, f"after (T = {temperature:.3g})", ece_after)):
        used = [b for b in bins if b["count"]]
        mids = [(b["lo"] + b["hi"]) / 2 for b in used]
        width = used[0]["hi"] - used[0]["lo"] if used else 0.1
        ax.bar(mids, [b["accuracy"] for b in used], width=width * 0.9, alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o", ms=4,
                color="C1", label="mean confidence")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ece_txt = "n/a" if e is None else f"{e:.3f}"
        ax.set(xlabel="confidence", title=f"{name}: ECE {ece_txt}", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("accuracy")
    return fig


def plot_series(ax: Any, x: Sequence[float], series: dict[str, Sequence[float]]) -> None:
    """One line per series against epochs, with integer epoch ticks. Series with the same values (validation
    accuracy and balanced accuracy on a balanced set, say) are drawn once under a joint label, so no line
    hides under another."""
    from matplotlib.ticker import MaxNLocator

    drawn: list[tuple[list[str], np.ndarray]] = []
    for name, values in series.items():
        v = np.asarray(values, float)
        same = next((d for d in drawn if d[1].shape == v.shape and np.allclose(d[1], v, equal_nan=True)),
                    None)
        if same is None:
            drawn.append(([name], v))
        else:
            same[0].append(name)
    for i, (names, v) in enumerate(drawn):
        ax.plot(x, v, marker="os^dv"[i % 5], linestyle=("-", "--", "-.", ":")[i % 4], label=" = ".join(names))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if drawn:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def history_figure(history: pd.DataFrame) -> Any | None:
    """Training curves: losses on the left, every other per-epoch figure on the right."""
    num = history.select_dtypes("number")
    x_col = "epoch" if "epoch" in num else None
    cols = [c for c in num if c != x_col]
    if not cols or len(num) == 0:
        return None
    plt = _plt()
    x = num[x_col] if x_col else np.arange(1, len(num) + 1)
    losses = [c for c in cols if "loss" in c]
    others = [c for c in cols if c not in losses and c not in ("lr", "seconds", "time")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, group, title in ((axes[0], losses, "loss"), (axes[1], others, "per-epoch figures")):
        plot_series(ax, list(x), {c: num[c] for c in group})
        ax.set(xlabel="epoch", title=title)
    return fig
