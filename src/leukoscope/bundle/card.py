"""The model card of a bundle (MONAI-style, Markdown): what the model is, trained on what, judged
how, for what use, with which library versions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from leukoscope.data.rare import RareReport

if TYPE_CHECKING:  # pandas only when a card is written, not on every bundle load
    import pandas as pd


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def class_map_line(cmap: dict[str, Any]) -> str:
    """The recorded map in one line: each common label from its source labels, and those left out."""
    parts = [f"{c} <- {' | '.join(src) or c}" for c, src in cmap["classes"].items()]
    drop = f"; left out: {', '.join(cmap['drop'])}" if cmap.get("drop") else ""
    return f"{cmap['name']}: " + "; ".join(parts) + drop


def outliers_line(figures: dict[str, Any]) -> str:
    """Where ``train --outliers`` took its cells from, how many, and how many held-out ones it flags."""
    n = {role: sum(sides.values()) for role, sides in figures["cells"].items()}
    sides = figures["cells"]["outlier"]
    what = f"class {figures['class']!r} of " if figures.get("class") is not None else ""
    flagged, others = figures.get("test_outliers_flagged"), figures.get("test_others_flagged")
    return (f"{n['outlier']} cells of {what}{figures['source']} ({sides['train']} learnt, {sides['val']} to "
            f"choose its regularisation, {sides['test']} held out)"
            + (f", {n['familiar']} others of it as familiar" if n.get("familiar") else "")
            + ("" if flagged is None else f"; {flagged:.1%} of the held-out ones flagged")
            + ("" if others is None else f", and {others:.1%} of its other held-out cells"))


def model_card(config: dict[str, Any], metrics: dict[str, Any],
               split: pd.DataFrame | None) -> str:
    """A MONAI-style model card in Markdown: what, trained on what, how judged, for what use."""
    lines = [f"# Model card: {config.get('model', config['family'])}", ""]
    lines += ["## Intended use",
              "Research on single-cell leukemia images only. **Not a medical device; not for "
              "diagnosis or treatment decisions.**", ""]
    lines += ["## Model", f"- family: {config['family']}", f"- model: {config.get('model', '-')}",
              f"- classes: {', '.join(config['classes'])}",
              f"- calibration temperature: {_fmt(float(config.get('temperature', 1.0)))}"]
    op = config.get("operating_point")
    if op:
        lines.append(f"- operating point: {op['positive']} when p({op['positive']}) >= {op['threshold']:.4g} "
                     f"({op.get('rule', '-')} on the validation side), else the most probable other class")
    u = config.get("unfamiliar")
    if u:
        taught = (f" (outlier exposure: taught {outliers_line(metrics['outliers'])}; the Mahalanobis "
                  "distance as a backstop)" if u["method"] == "exposure" and "outliers" in metrics else "")
        rate = u.get("target_false_flag_rate", 0.05)
        lines.append(f"- unfamiliarity score: {u['method']}{taught}; a cell past {u['threshold']:.4g} is "
                     f"called unfamiliar ({rate:.0%} of familiar validation cells)")
    for key in ("input_size", "features", "preprocessing", "trained_on"):
        if key in config:
            lines.append(f"- {key}: {json.dumps(config[key])}")
    lines += ["", "## Data and protocol", f"- data: {config.get('data', '-')}",
              f"- protocol: {config.get('protocol', '-')}"]
    if config.get("class_map"):
        lines.append(f"- class map (labels mapped before training): {class_map_line(config['class_map'])}")
    if config.get("rare_classes"):
        line = RareReport.from_json(config["rare_classes"]).line()
        lines.append(f"- rare classes: {line}")
    if config.get("protocol") == "image-level":
        lines.append("- warning: no subject ids; cells of one patient may be on both sides, so "
                     "the figures below may be optimistic")
    if "dedupe" in config:
        kept = "each cluster the audit found kept on one side"
        lines.append("- duplicate cells: " + (kept if config["dedupe"]
                                              else "not grouped (--no-dedupe): copies may sit on two sides"))
    if split is not None and "side" in split:
        for side, part in split.groupby("side"):
            lines.append(f"- {side}: {len(part)} images, {part['group'].nunique()} groups")
    lines += ["", "## Metrics", "- sides: `validation` is the val side, `test` the test side (scored once)"
              + (f"; `cross_validation`: {metrics['cross_validation_on']}" if "cross_validation_on" in metrics
                 else "")]
    for part, figures in metrics.items():
        if isinstance(figures, dict):
            flat = ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items()
                             if isinstance(v, int | float))
            lines.append(f"- {part}: {flat}")
    lines += ["", "## Versions"]
    lines += [f"- {k}: {v}" for k, v in config.get("versions", {}).items()]
    return "\n".join(lines) + "\n"
