"""``leukoscope evaluate``: metrics.json, predictions.csv and an HTML report for a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import app, console, read_data, say
from leukoscope.cli.classmap import mapped
from leukoscope.cli.decisions import print_decision
from leukoscope.cli.options import (
    AdaptOpt,
    BatchOpt,
    BundleArg,
    DiagnosisOpt,
    EvaluateClassMapOpt,
    LayoutOpt,
    Paths,
    RuntimeOpt,
    SplitFileOpt,
    SubjectIdOpt,
    SubjectsOpt,
    TtaOpt,
    subject_table,
)
from leukoscope.cli.progress import shown
from leukoscope.errors import ConfigError


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


@app.command("evaluate")
def evaluate_cmd(
    bundle: BundleArg,
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, predictions.csv and "
                                      "report.html.")],
    layout: LayoutOpt = None,
    subjects: SubjectsOpt = None,
    subject_id: SubjectIdOpt = None,
    diagnosis: DiagnosisOpt = "diagnosis",
    side: Annotated[str | None, typer.Option(
        "--side", help="Only images on this side (test, val, train) of the bundle's own split (of --split "
        "FILE when given).", show_default="every image given; test with --split")] = None,
    split: SplitFileOpt = None,
    tta: TtaOpt = False,
    batch_size: BatchOpt = 64,
    runtime: RuntimeOpt = "auto",
    class_map: EvaluateClassMapOpt = None,
    adapt: AdaptOpt = False,
) -> None:
    """Accuracy, balanced accuracy, P/R/F1, ROC AUC, ECE before/after calibration, per subject; report."""
    from leukoscope.bundle import load_bundle
    from leukoscope.data.classes import show_class
    from leukoscope.evaluate.coverage import coverage_line
    from leukoscope.evaluate.intervals import fmt_ci
    from leukoscope.evaluate.report import REPORT_FILE, evaluate

    cohort_table = subject_table(subjects, subject_id, diagnosis)  # a bad table fails before the bundle loads
    b = load_bundle(bundle, runtime=runtime)
    if b.family == "patient":
        from leukoscope.cli.patients import evaluate_patients_cmd

        if adapt:
            raise ConfigError("--adapt: patient bundles cannot be adapted to a new lab; classical and "
                              "network bundles can")
        cell_only = {"--side": side, "--split": split, "--class-map": class_map, "--tta": tta}
        if ignored := [flag for flag, v in cell_only.items() if v]:
            raise ConfigError(f"{', '.join(ignored)}: not options of a patient bundle's evaluation "
                              f"(it scores every patient given, from all their cells)")
        return evaluate_patients_cmd(b, paths, layout, out, cohort_table, diagnosis)
    from leukoscope.data.rare import as_trained
    from leukoscope.data.splits import read_split

    given = read_data(paths, layout, cohort_table, mapped=class_map is not None or "class_map" in b.config)
    m, cmap, counts = mapped(given, class_map, b.config.get("class_map"))
    if cmap is not None:  # the mapped labels, as the model's training merged or dropped rare classes
        cmap.check_classes(as_trained(m, b.config), b.classes, f"the classes of {bundle}")
    given = read_split(split, present=m["path"]) if split is not None else None
    with shown() as bars:
        r = evaluate(b, m, out, tta=tta, side=side, batch_size=batch_size, progress=bars, split=given,
                     class_map=counts, adapt=adapt)
    where = f"the {r['side']} side of {r['side_of']}" if r["side"] else "the images given"
    table = Table(title=escape(f"{r['model']} on {r['evaluated']} images: {where} ({r['protocol']})"))
    levels = [lvl for lvl in ("cell", "subject") if lvl in r]
    table.add_column("figure")
    for lvl in levels:
        table.add_column(f"{lvl} level", justify="right")
    for key in ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "roc_auc", "ece"):
        table.add_row(key, *(_f(r[lvl][key]) + fmt_ci(r[lvl].get("ci95", {}).get(key)) for lvl in levels))
    console.print(table)
    console.print(escape("classes: " + ", ".join(show_class(c, r["display_names"]) for c in r["classes"])))
    if "operating_point" in r:
        print_decision(r["operating_point"], "operating point")
    if "crosslab" in r:
        from leukoscope.cli.crosslab import print_side_by_side

        print_side_by_side(r["crosslab"])
    cal = r["calibration"]
    console.print(f"ECE before / after temperature (T = {cal['temperature']:.3f}): "
                  f"{_f(cal['ece_before'])} / {_f(cal['ece_after'])}")
    say(coverage_line(r["unfamiliar"]))
    if r["adapted"]:
        from leukoscope.predict.adapt import adaptation_line

        say(adaptation_line(r["adapted"]))
    cut = r["shortcut"]  # the colour shortcut beside the model (its warning, if any, a note below)
    if cut["figure"]:
        console.print(escape(f"{cut['label']}: balanced accuracy {cut['text']} ({cut['how']})"))
    for w in r["warnings"] + ([cut["warning"]] if cut["warning"] else []):
        console.print(f"[yellow]note:[/] {escape(w)}")
    if r["skipped"]:
        console.print(f"[yellow]{len(r['skipped'])} unreadable image(s) skipped:[/]")
        for s in r["skipped"]:
            say(f"  {s['path']}: {s['reason']}")
    say(f"wrote {Path(out) / REPORT_FILE} and metrics.json, predictions.csv")
