"""``leukoscope train``: train a network or fit a classical pipeline; the bundle lands in RUN_DIR/bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import (
    app,
    check_out_folder,
    console,
    err_console,
    print_rare,
    print_skipped,
    read_data,
)
from leukoscope.cli.classmap import mapped
from leukoscope.cli.decisions import print_operating_point
from leukoscope.cli.options import (
    ClassMapOpt,
    DedupeOpt,
    DiagnosisOpt,
    LayoutOpt,
    MinCellsOpt,
    Paths,
    RareOpt,
    SplitFileOpt,
    SubjectIdOpt,
    SubjectsOpt,
    subject_table,
)
from leukoscope.cli.progress import shown
from leukoscope.errors import ConfigError

NETWORKS, CLASSICAL, PATIENTS = "Networks", "Classical", "Patients (--target)"
UNFAMILIAR = "Unfamiliar cells"
#: What the "frozen + LR" rows are, printed where they appear.
FROZEN_LR = ("frozen + LR: logistic regression on the pretrained network's frozen embeddings, fitted before "
             "fine-tuning (it starts the head); the baseline that fine-tuning has to beat")


def _figures_table(metrics: dict[str, Any]) -> Table:
    keys = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc", "ece_before", "ece_after")
    table = Table(title=f"held-out figures ({metrics.get('protocol', '-')}), by side (images)")
    table.add_column("")
    for k in keys:
        table.add_column(k.replace("_", " "))
    sides = metrics.get("sides", {})
    rows: list[tuple[str, Any]] = [(f"{side} ({sides.get(side, '?')})", metrics[n])
                                   for n, side in (("validation", "val"), ("test", "test")) if n in metrics]
    rows += [(f"frozen + LR {side}", figs) for side, figs in metrics.get("frozen_lr", {}).items()]
    for name, figs in rows:
        table.add_row(name, *(f"{figs[k]:.4f}" if isinstance(figs.get(k), float) else "-" for k in keys))
    if metrics.get("frozen_lr"):
        table.caption = FROZEN_LR
    return table


def print_outliers(figures: dict[str, Any] | None) -> None:
    """The line saying how well the score learnt ``--outliers``: on their held-out (test) side."""
    if not figures:
        return
    n = figures["cells"]["outlier"]
    auc = figures.get("test_auc")
    flagged, own, others = (figures.get(f"test_{k}_flagged") for k in ("outliers", "cells", "others"))
    console.print(escape(
        f"unfamiliar (outlier exposure, {sum(n.values())} outlier cells: {n['train']} learnt, {n['val']} to "
        f"choose C = {figures['C']:g}, {n['test']} held out): "
        + ("-" if flagged is None else f"{flagged:.1%} of held-out outliers flagged")
        + ("" if own is None else f", {own:.1%} of this run's test cells")
        + ("" if others is None else f", {others:.1%} of the outlier set's other held-out cells")
        + ("" if auc is None else f", ROC AUC {auc:.3f}")))


@app.command("train")
def train_cmd(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoints, curves, bundle/).")],
    model: Annotated[str | None, typer.Option("--model", show_default="efficientnet_lite0", help=(
        "A network ({network_models}) or a classical pipeline ({classical_models}); with --target, a "
        "patient method."))] = None,
    subset: Annotated[float | None, typer.Option(help="Train on this fraction of the groups.",
                                                 show_default="1.0")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", show_default="0")] = None,
    cv: Annotated[int | None, typer.Option("--cv", show_default="one split", help=(
        "Subject-grouped K-fold CV instead of one split (with --target: the folds of the patient CV, "
        "5)."))] = None,
    split_protocol: Annotated[str | None, typer.Option("--split-protocol", show_default="auto", help=(
        "auto | official (C-NMC: official folds vs prelim test)."))] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", show_default="none", help="run.yaml with these settings; options given here win "
        "over it.")] = None,
    layout: LayoutOpt = None,
    subjects: SubjectsOpt = None,
    subject_id: SubjectIdOpt = None,
    diagnosis: DiagnosisOpt = "diagnosis",
    epochs: Annotated[int | None, typer.Option(
        show_default="the model's", rich_help_panel=NETWORKS,
        help="Maximum epochs, kept as given (the model's own is stretched on small sets to its min_steps, "
        "e.g. 400 steps for efficientnet_lite0; see --min-steps).")] = None,
    min_steps: Annotated[int | None, typer.Option("--min-steps", help=(
        "Pad the model's epochs until the run takes at least this many optimiser steps (a small set or "
        "--subset gets more epochs; a line says so); 0 turns it off."), show_default="the model's",
        rich_help_panel=NETWORKS)] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW, cosine).",
                                             show_default="the model's", rich_help_panel=NETWORKS)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per optimiser step.",
                                                   show_default="the model's", rich_help_panel=NETWORKS)
                          ] = None,
    img_size: Annotated[int | None, typer.Option("--img-size", help="Input size in pixels (with --target: "
                                                 "of the cell embedding).", show_default="the model's",
                                                 rich_help_panel=NETWORKS)] = None,
    grayscale: Annotated[bool | None, typer.Option("--grayscale/--rgb", help="Colour or grey input.",
                                                   show_default="rgb", rich_help_panel=NETWORKS)] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help="Random flips, rotations, "
                                                 "colour and blur while training.", show_default="augment",
                                                 rich_help_panel=NETWORKS)] = None,
    aug_strength: Annotated[float | None, typer.Option("--aug-strength", help="0 = flips only ... 1.5.",
                                                       show_default="1.0", rich_help_panel=NETWORKS)] = None,
    stain: Annotated[str | None, typer.Option(help="Stain normalisation: {stain_methods}.",
                                              show_default="none", rich_help_panel=NETWORKS)] = None,
    stain_jitter: Annotated[float | None, typer.Option(
        "--stain-jitter", help="HED stain jitter while training (0 off; 0.2 ~ another lab's stain).",
        show_default="0.0", rich_help_panel=NETWORKS)] = None,
    crop_to_cell: Annotated[bool | None, typer.Option("--crop-to-cell/--no-crop-to-cell",
                                                      help="Crop black-background cells first.",
                                                      show_default="no-crop-to-cell",
                                                      rich_help_panel=NETWORKS)] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Test-time flips + rotations.",
                                             show_default="no-tta", rich_help_panel=NETWORKS)] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience (epochs).",
                                                 show_default="the model's", rich_help_panel=NETWORKS)
                        ] = None,
    finetune_depth: Annotated[int | None, typer.Option(
        "--finetune-depth", help="Top stages fine-tuned (-1 all, 0 head only).", show_default="-1",
        rich_help_panel=NETWORKS)] = None,
    freeze_bn: Annotated[bool | None, typer.Option("--freeze-bn/--no-freeze-bn",
                                                   help="Keep BatchNorm statistics frozen.",
                                                   show_default="the model's", rich_help_panel=NETWORKS)
                         ] = None,
    device: Annotated[str | None, typer.Option("--device", help=(
        "auto (cuda when torch sees a GPU, else cpu) | cpu | cuda."), show_default="auto",
        rich_help_panel=NETWORKS)] = None,
    features: Annotated[str | None, typer.Option("--features", help=(
        "The image features the pipeline is fitted on: {feature_kinds}."), show_default="handcrafted",
        rich_help_panel=CLASSICAL)] = None,
    target: Annotated[str | None, typer.Option("--target", help="Patient-level: a column of the cohort's "
                                               "subject table; trains a patient method (--model, --cv folds, "
                                               "--img-size, --seed apply) with repeated patient CV.",
                                               show_default="a cell-level model", rich_help_panel=PATIENTS)
                      ] = None,
    positive: Annotated[str | None, typer.Option("--positive", help=(
        "The positive class: its decision threshold is chosen on the validation side and stored in the "
        "bundle (predict, serve and evaluate use it). With --target: the positive patient class."),
        show_default="argmax; with --target the rarer")] = None,
    target_sensitivity: Annotated[float | None, typer.Option("--target-sensitivity", help=(
        "With --positive: the highest threshold reaching this validation sensitivity."),
        show_default="Youden's J")] = None,
    repeats: Annotated[int | None, typer.Option("--repeats", help="With --target: CV repeats.",
                                                show_default="5", rich_help_panel=PATIENTS)] = None,
    min_cells: MinCellsOpt = None,
    rare: RareOpt = None,
    split: SplitFileOpt = None,
    dedupe: DedupeOpt = None,
    class_map: ClassMapOpt = None,
    outliers: Annotated[str | None, typer.Option("--outliers", metavar="PATH", help=(
        "A data set of cells the model must never call one of its classes (say, blasts for a model of "
        "normal cells): the unfamiliarity score learns them (outlier exposure) and flags cells like them."),
        show_default="none", rich_help_panel=UNFAMILIAR)] = None,
    outlier_class: Annotated[str | None, typer.Option("--outlier-class", help=(
        "Only this class of --outliers is what to flag; its other cells teach the score that their lab's "
        "stain is no reason to flag."), show_default="every cell of --outliers", rich_help_panel=UNFAMILIAR)
                             ] = None,
) -> None:
    """Train a network (from scratch or fine-tuned) or fit a classical pipeline on a grouped split; rerun
    to resume. With --target, a patient-level model instead: one call per patient from its cells."""
    from leukoscope.data.classes import show_class
    from leukoscope.data.rare import RareReport

    cohort_table = subject_table(subjects, subject_id, diagnosis)
    if target is not None:
        if target_sensitivity is not None:
            raise ConfigError("--target-sensitivity goes with a cell-level model, not --target")
        if class_map is not None:  # patient labels come from the cohort table, not from cell labels
            raise ConfigError("--class-map maps cell labels; it does not apply to --target (patient labels)")
        if outliers is not None or outlier_class is not None:
            raise ConfigError("--outliers teaches a cell-level model's score; it does not apply to --target")
        from leukoscope.cli.patients import train_patients_cmd

        return train_patients_cmd(paths, layout, out, target, model, positive, repeats, cv, img_size, seed,
                                  cohort_table)
    if repeats is not None:
        raise ConfigError("--repeats goes with --target (a patient-level model)")
    if outliers is not None and not outliers.strip():  # Path("") would be the current folder
        raise ConfigError("--outliers: empty path; name a folder or a CSV of images")
    if outliers is not None and not Path(outliers).exists():
        raise ConfigError(f"--outliers {outliers}: not found")
    from leukoscope.train import TrainConfig, TrainingInterrupted, cross_validate, train

    cfg = TrainConfig.build(
        config, model=model, epochs=epochs, lr=lr, batch_size=batch_size, img_size=img_size,
        grayscale=grayscale, subset=subset, augment=augment, aug_strength=aug_strength, stain=stain,
        stain_jitter=stain_jitter,
        crop_to_cell=crop_to_cell, tta=tta, patience=patience, finetune_depth=finetune_depth, seed=seed,
        freeze_bn=freeze_bn, cv=cv, split_protocol=split_protocol, features=features, min_cells=min_cells,
        rare=rare, device=device, positive=positive, target_sensitivity=target_sensitivity,
        split=None if split is None else str(split.resolve()), dedupe=dedupe, min_steps=min_steps,
        outliers=outliers, outlier_class=outlier_class)
    if cfg.outliers:  # given here or by --config: a run written into the outliers would become one of them
        check_out_folder(out, {"outliers": Path(cfg.outliers)})
    given = read_data(paths, layout, cohort_table, mapped=class_map is not None or cfg.class_map is not None)
    m, cmap, _ = mapped(given, class_map, cfg.class_map, f"{config} records")
    if cmap is not None:  # the bundle records the map's content, so a moved or edited file does not matter
        cfg.class_map = cmap.to_json()
    try:
        with shown() as bars:
            if cfg.cv:
                result = cross_validate(m, cfg, out, bars)
            else:
                bundle = train(m, cfg, out, bars)
    except TrainingInterrupted as e:
        err_console.print(f"[yellow]{e}[/]")
        raise typer.Exit(130) from None
    if cfg.cv:
        table = Table(title=f"{result['k']}-fold CV ({result['protocol']}), weighted F1")
        for col in ("fold", "test images", "test groups", "fine-tuned", "frozen + LR"):
            table.add_column(col)
        for f in result["folds"]:
            fz = f.get("frozen_lr_f1_weighted")
            table.add_row(str(f["fold"]), str(f["test_images"]), str(f["test_groups"]),
                          f"{f['f1_weighted']:.3f}", "-" if fz is None else f"{fz:.3f}")
        if any(f.get("frozen_lr_f1_weighted") is not None for f in result["folds"]):
            table.caption = FROZEN_LR
        console.print(table)
        lo, hi = result["f1_weighted_ci95"]
        over = "images" if result["protocol"] == "image-level" else "subjects"
        console.print(f"pooled weighted F1 {result['pooled']['f1_weighted']:.3f} "
                      f"(95% interval, bootstrap over {over}, {lo:.2f}-{hi:.2f}); "
                      f"per-fold mean {result['f1_weighted_mean']:.3f} +- {result['f1_weighted_std']:.3f}")
        for key, name in (("balanced_accuracy", "balanced accuracy"), ("f1_macro", "macro F1")):
            lo, hi = result[f"{key}_ci95"]
            console.print(f"pooled {name} {result['pooled'][key]:.3f} (interval {lo:.2f}-{hi:.2f}); "
                          f"per-fold mean {result[f'{key}_mean']:.3f} +- {result[f'{key}_std']:.3f}")
        print_rare(RareReport.from_json(result["rare_classes"]) if "rare_classes" in result else None)
        console.print(f"results: {out / 'cv.json'}")
        return
    console.print(_figures_table(bundle.metrics()))
    from leukoscope.data.manifest import skipped_files
    from leukoscope.train import rundir

    said = {p for p, _ in skipped_files(m)}  # the reader's left-outs, printed as it read them
    print_skipped([(p, r) for p, r in rundir.read_skipped(out) if p not in said])
    names = bundle.display_names
    console.print(escape("classes: " + ", ".join(show_class(c, names) for c in bundle.classes)))
    print_operating_point(bundle.metrics().get("operating_point"))
    print_outliers(bundle.metrics().get("outliers"))
    recorded = bundle.config.get("rare_classes")
    print_rare(RareReport.from_json(recorded) if recorded else None)
    warning = bundle.metrics().get("split_warning")
    if warning:
        console.print(f"[yellow]note:[/] {warning}")
    curves = out / "curves.png"
    console.print(f"bundle: {bundle.path}" + (f"  (curves: {curves})" if curves.is_file() else ""))
