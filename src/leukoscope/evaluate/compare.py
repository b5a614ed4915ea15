"""``compare``: score two bundles on exactly the same cells and test their difference pair by pair.

Both bundles see the same labelled rows (with ``side``, the rows on that side of both bundles' splits:
where the two recorded different splits, the intersection, and the count of what was dropped), every
unreadable image is dropped for both, and the statistics are those of ``evaluate.paired``. Writes
comparison.json, a Markdown and an HTML table fit for a paper, and comparison.csv (both models'
probabilities per cell, so anyone can check the pairing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope import __version__
from leukoscope.bundle import Bundle
from leukoscope.data.manifest import IMAGE_LEVEL_WARNING, Manifest, label_indices, labelled, protocol
from leukoscope.data.rare import as_trained
from leukoscope.errors import BundleError, DataError
from leukoscope.evaluate.paired import compare_predictions
from leukoscope.evaluate.report import on_side, score_paths, training_overlap
from leukoscope.io import write_csv_atomic, write_json_atomic, write_text_atomic
from leukoscope.predict.tta import proba_from_views
from leukoscope.progress import SILENT, Progress

JSON_FILE, MARKDOWN_FILE, HTML_FILE, CELLS_FILE = ("comparison.json", "comparison.md", "comparison.html",
                                                   "comparison.csv")


def class_order(a: Bundle, b: Bundle) -> list[int]:
    """Columns of B's probabilities in A's class order; refuses bundles that predict different classes."""
    if sorted(a.classes) != sorted(b.classes):
        raise BundleError(f"{a.path} and {b.path} predict different classes ({', '.join(a.classes)} vs "
                          f"{', '.join(b.classes)}): they cannot be compared cell by cell")
    if a.config.get("rare_classes") != b.config.get("rare_classes"):
        raise BundleError(f"{a.path} and {b.path} merged or dropped rare classes differently: their labels "
                          "do not mean the same cells")
    return [b.classes.index(c) for c in a.classes]


def common_cells(a: Bundle, b: Bundle, m: Manifest, side: str | None) -> tuple[Manifest, list[str]]:
    """The labelled rows both bundles are judged on, and notes on what that choice means (images either
    model was built from: on any side but test, so also with ``--side train`` or ``val``)."""
    notes = []
    if side is not None:
        on_a, on_b = set(on_side(a, m, side)["path"]), set(on_side(b, m, side)["path"])
        both = on_a & on_b
        if not both:
            raise DataError(f"--side {side}: no image sits on the {side} side of both {a.path} and {b.path}")
        if on_a != on_b:
            notes.append(f"the bundles recorded different splits: compared on the {len(both)} images on the "
                         f"{side} side of both; dropped {len(on_a - both)} only on A's and "
                         f"{len(on_b - both)} only on B's")
        m = m[m["path"].isin(both)].reset_index(drop=True)
    for name, bundle in (("A", a), ("B", b)):
        overlap = training_overlap(bundle, list(m["path"]))
        seen = {k: v for k, v in overlap.items() if k in ("train", "val")}
        if seen:
            notes.append(f"{sum(seen.values())} of the images were used to build {name} "
                         f"({', '.join(f'{v} {k}' for k, v in seen.items())}): figures on them are "
                         "optimistic; use --side test")
    return m, notes


def _label(bundle: Bundle, other: Bundle) -> str:
    """What a table calls a model: its name, and its folder where both models share the name."""
    name = str(bundle.config.get("model", bundle.family))
    return name if name != other.config.get("model", other.family) else f"{name} ({bundle.path})"


def compare(a: Bundle, b: Bundle, m: Manifest, out: Path, side: str | None = None, tta: bool = False,
            batch_size: int = 64, n_boot: int = 2000, seed: int = 0,
            progress: Progress = SILENT) -> dict[str, Any]:
    """Score ``a`` and ``b`` on the same labelled rows of ``m`` (optionally one ``side`` of both splits),
    test the differences (``paired.compare_predictions``) and write the comparison files into ``out``."""
    columns = class_order(a, b)
    classes = a.classes
    m = as_trained(labelled(m), a.config)
    m, notes = common_cells(a, b, m, side)
    if m.empty:
        raise DataError("no labelled images to compare")
    paths = list(m["path"])
    ok_a, logits_a, skipped = score_paths(a, paths, batch_size, tta, progress)
    ok_b, logits_b, skipped_b = score_paths(b, paths, batch_size, tta, progress)
    skipped += [s for s in skipped_b if s not in skipped]  # a cell one model cannot read is out for both
    ok, in_a, in_b = np.intersect1d(ok_a, ok_b, return_indices=True)
    if len(ok) == 0:
        raise DataError(f"none of the {len(m)} images could be read")
    m = m.iloc[ok].reset_index(drop=True)
    y = np.asarray(label_indices(m, classes), int)
    probs_a = proba_from_views(logits_a[in_a], a.temperature)
    probs_b = proba_from_views(logits_b[in_b], b.temperature)[:, columns]
    prot = protocol(m)
    if prot == "image-level":
        notes.append(IMAGE_LEVEL_WARNING + "; the tests treat cells as independent")
    else:
        notes.append("cells of one subject are not independent: every test of record resamples subjects "
                     "(McNemar and DeLong, which treat cells as independent, are listed for reference)")
    stats = compare_predictions(y, probs_a, probs_b, classes, list(m["group"]),
                                by_subject=prot != "image-level", n_boot=n_boot, seed=seed)
    accuracy = next(row for row in stats["table"] if row["figure"] == "accuracy")
    built_from = any("were used to build" in n for n in notes)
    for key, bundle, other in (("a", a, b), ("b", b, a)):
        if accuracy[key] == 1.0 and not built_from:  # the percentile bootstrap of a perfect score is [1, 1]
            notes.append(f"{_label(bundle, other)} got all {len(y)} images right, so its "
                         f"bootstrap interval is [1, 1]; its error rate on new cells is only bounded, "
                         f"below {3 / len(y):.3f} with 95% confidence (rule of three)")
    result: dict[str, Any] = {
        "a": {"bundle": str(a.path), "name": _label(a, b), "family": a.family},
        "b": {"bundle": str(b.path), "name": _label(b, a), "family": b.family},
        "classes": classes, "side": side, "tta": tta, "protocol": prot, "images": len(paths),
        "compared": int(len(y)), "notes": notes,
        "skipped": [{"path": p, "reason": r} for p, r in skipped], **stats,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / JSON_FILE, result)
    write_text_atomic(out / MARKDOWN_FILE, to_markdown(result))
    _write_cells(out / CELLS_FILE, m, y, probs_a, probs_b, classes)
    from leukoscope.reports.html import write_report

    write_report(out / HTML_FILE, "comparison.html", title=title(result), protocol=protocol_text(result),
                 version=__version__,
                 warning=" ".join(f"{n}." for n in notes), r=result, header=table_header(result),
                 rows=table_rows(result))
    return result


def _write_cells(path: Path, m: Manifest, y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                 classes: list[str]) -> None:
    df = pd.DataFrame({"path": m["path"], "subject": m["subject"], "label": [classes[i] for i in y],
                       "predicted_a": [classes[i] for i in probs_a.argmax(axis=1)],
                       "predicted_b": [classes[i] for i in probs_b.argmax(axis=1)]})
    for name, probs in (("a", probs_a), ("b", probs_b)):
        for i, c in enumerate(classes):
            df[f"p_{name}_{c}"] = probs[:, i]
    write_csv_atomic(path, df)


def title(r: dict[str, Any]) -> str:
    return f"{r['a']['name']} (A) vs {r['b']['name']} (B) on the same {r['compared']} images"


def protocol_text(r: dict[str, Any]) -> str:
    where = f"{r['side']} side of both bundles' splits" if r["side"] else "given images"
    return (f"{r['protocol']} ({where}); 95% intervals from {r['bootstrap']['draws']} paired bootstrap draws "
            f"over {r['groups']} {r['level']}")


def table_header(r: dict[str, Any]) -> list[str]:
    return ["Figure", f"A: {r['a']['name']}", f"B: {r['b']['name']}", "B - A", "p", "Test"]


def _num(v: float | None, interval: list[float] | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    v = round(v, 3) + 0.0  # no "-0.000"
    text = f"{v:+.3f}" if signed else f"{v:.3f}"
    return text if interval is None else f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _p(p: float | None) -> str:
    return "-" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def table_rows(r: dict[str, Any]) -> list[list[str]]:
    """The paper table: per figure both models [95% interval], the difference [interval], p, test."""
    return [[row["name"], _num(row["a"], row["a_interval"]), _num(row["b"], row["b_interval"]),
             _num(row["difference"], row["difference_interval"], signed=True), _p(row["p_value"]),
             row["test"]] for row in r["table"]]


def to_markdown(r: dict[str, Any]) -> str:
    """The comparison as Markdown: title, protocol, the table, McNemar's counts, notes."""
    header = table_header(r)
    mc = r["mcnemar"]
    lines = [f"# {title(r)}", "", f"- protocol: **{protocol_text(r)}**",
             f"- A: `{r['a']['bundle']}`; B: `{r['b']['bundle']}`; classes: {', '.join(r['classes'])}",
             "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|",
             *("| " + " | ".join(row) + " |" for row in table_rows(r)), "",
             f"McNemar (exact): both right {mc['both']}, only A {mc['a_only']}, only B {mc['b_only']}, "
             f"both wrong {mc['neither']}; p = {_p(mc['p_value'])}."]
    if r["delong"] is not None:
        d = r["delong"]
        lines.append(f"DeLong: AUC {d['auc_a']:.3f} vs {d['auc_b']:.3f}, difference {d['difference']:+.3f} "
                     f"(SE {d['se']:.3f}), p = {_p(d['p_value'])}.")
    lines += [f"Note: {n}." for n in r["notes"]]
    if r["skipped"]:
        lines.append(f"Skipped {len(r['skipped'])} unreadable image(s) for both models.")
    return "\n".join(lines) + "\n"
