"""``leukoscope data describe | split | synth``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import console, data_app, print_json, print_rare, read_data, say
from leukoscope.cli.options import (
    DiagnosisOpt,
    LayoutOpt,
    MinCellsOpt,
    Paths,
    RareOpt,
    SubjectIdOpt,
    SubjectsOpt,
    subject_table,
)
from leukoscope.cli.progress import shown


@data_app.command("describe")
def describe_cmd(paths: Paths, layout: LayoutOpt = None, subjects: SubjectsOpt = None,
                 subject_id: SubjectIdOpt = None, diagnosis: DiagnosisOpt = "diagnosis",
                 as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not tables.")] = False
                 ) -> None:
    """Images per class, subjects per class, per source split; sizes, modes, unreadable files.

    For a patient cohort also patients per diagnosis, cells per patient and per type, unlabelled
    cells, whole-field overview images and skipped files.
    """
    from leukoscope.data.describe import describe
    from leukoscope.data.readers import read_with_cohorts

    # what the readers left out is listed under unreadable
    m, cohorts = read_with_cohorts(paths, layout, subject_table(subjects, subject_id, diagnosis))
    with shown() as bars:
        info = describe(m, cohorts, progress=bars)
    if as_json:
        print_json(info)
        return
    table = Table(title=escape(f"{', '.join(info['datasets'])} ({info['protocol']})"))
    for col in ("source split", "class", "images", "subjects"):
        table.add_column(col)
    for split_name, entry in info["source_splits"].items():
        for label, c in entry["classes"].items():
            ids = ", ".join(c["subject_ids"][:8]) + (" ..." if len(c["subject_ids"]) > 8 else "")
            table.add_row(split_name, escape(label), str(c["images"]),
                          f"{c['subjects']} ({ids})" if c["subjects"] else "-")
    console.print(table)
    console.print(f"sizes: {info['sizes']}  modes: {info['modes']}")
    if "cohort" in info:
        _print_cohort(info["cohort"])
    if "warning" in info:
        console.print(f"[yellow]note:[/] {info['warning']}")
    if info["unreadable"]:
        console.print(f"[yellow]{len(info['unreadable'])} unreadable file(s):[/]")
        for u in info["unreadable"]:
            say(f"  {u['path']}: {u['reason']}")


def _print_cohort(c: dict) -> None:
    """The cohort lines of ``data describe``: patients, cells, and what is not a cell."""
    per_dx = ", ".join(f"{k} {v}" for k, v in c["patients_per_diagnosis"].items())
    cpp = c["cells_per_patient"]
    console.print(escape(
        f"cohort: {c['patients']} patients ({c['diagnosis_column']}: {per_dx}); cells per patient "
        f"min {cpp['min']} / median {cpp['median']:g} / max {cpp['max']}; {c['typed_cells']} typed cells "
        f"in {c['cell_types']} types, {c['unlabelled_cells']} unlabelled; {c['overview_images']} "
        f"overview image(s), not cells"))
    for what, items in (("patient(s) with no cells", c["patients_without_cells"]),
                        ("folder(s) not in the subjects table", list(c["unlisted_folders"]))):
        if items:
            console.print(f"[yellow]{len(items)} {what}:[/] " + escape(", ".join(items)))
    if c["skipped"]:
        reasons = Counter(s["reason"] for s in c["skipped"])
        console.print(escape(f"{c['skipped_files']} file(s) skipped: ")
                      + escape("; ".join(f"{r} ({n})" for r, n in reasons.most_common())))


@data_app.command("split")
def split_cmd(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Where to write the split CSV.")],
    layout: LayoutOpt = None,
    k: Annotated[int | None, typer.Option("--k", help="k-fold instead of train/val/test.",
                                          show_default="train/val/test")] = None,
    val: Annotated[float, typer.Option(help="Validation fraction.")] = 0.15,
    test: Annotated[float, typer.Option(help="Test fraction.")] = 0.15,
    official: Annotated[bool, typer.Option("--official", help="C-NMC official protocol: "
                                           "training folds vs the labelled prelim test.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    dedupe: Annotated[bool, typer.Option("--dedupe/--no-dedupe", help="Audit for duplicate cells first "
                                         "(cached) and keep each duplicate cluster in one group; "
                                         "--no-dedupe marks the split as made without it.")] = True,
    min_cells: MinCellsOpt = None,
    rare: RareOpt = None,
) -> None:
    """Stratified split grouped by subject (image-level where there is none); never leaks."""
    from leukoscope.audit.groups import dedupe as dedupe_groups
    from leukoscope.data.rare import rare_classes
    from leukoscope.data.splits import (
        describe_split,
        holdout_shares,
        kfold,
        mark_dedupe,
        official_cnmc,
        train_val_test,
        write_split,
    )

    if official and k is not None:
        from leukoscope.errors import ConfigError

        raise ConfigError("--official uses C-NMC's own folds and test set; leave out --k")
    m, rare_report = rare_classes(read_data(paths, layout), min_cells, rare)
    merged = None
    if dedupe:
        with shown() as bars:
            m, merged = dedupe_groups(m, progress=bars)
    else:
        m = mark_dedupe(m, False)
    if official:
        s = official_cnmc(m, val=val, seed=seed)
    elif k is not None:
        s = kfold(m, k=k, seed=seed)
        if (made := s["fold"].nunique()) != k:
            console.print(escape(f"note: --k {k} made {made} folds: no more than the groups (subjects, or "
                                 "images) of the rarest class"))
    else:
        s = train_val_test(m, val=val, test=test, seed=seed)
        for side, share in holdout_shares(val, test).items():
            asked = {"val": val, "test": test}[side]
            if abs(share - asked) > 0.02:
                console.print(escape(f"note: --{side} {asked:g} holds out about {share:.0%} of the cells: a "
                                     "grouped hold-out is one of k stratified folds, and 1/k comes nearest"))
    write_split(s, out)
    info = describe_split(s)
    table = Table(title=f"split ({info['protocol']})")
    for col in (info["by"], "images", "groups", "per class"):
        table.add_column(col)
    for key, part in info["parts"].items():
        table.add_row(key, str(part["images"]), str(part["groups"]),
                      escape(", ".join(f"{c} {n}" for c, n in part["per_class"].items())))
    console.print(table)
    if "warning" in info:
        console.print(f"[yellow]note:[/] {info['warning']}")
    print_rare(rare_report)
    if merged is not None:
        console.print(f"dedupe: {merged} duplicate cluster(s) merged their groups")
    console.print(escape(f"no group on two sides; wrote {out}"))


@data_app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to create (class sub-folders).")],
    subjects: Annotated[int, typer.Option(help="Number of synthetic subjects.")] = 12,
    per_subject: Annotated[int, typer.Option(help="Cells per subject.")] = 10,
    classes: Annotated[int, typer.Option(help="Number of classes (2-4).")] = 2,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 96,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a SYNTHETIC cell data set (for demos and tests; not real cells)."""
    from leukoscope.data.synthetic import make_synthetic
    from leukoscope.errors import ConfigError

    if not 2 <= classes <= 4:
        raise ConfigError(f"--classes must be 2..4, got {classes}")
    make_synthetic(out, subjects, per_subject, classes, size, seed)
    console.print(escape(f"wrote {subjects * per_subject} synthetic cells to {out}"))
