"""``leukoscope report``: a patient bundle's call for each patient folder, as HTML, CSV and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from leukoscope.cli.app import app, console, say
from leukoscope.cli.options import BundleArg, DiagnosisOpt, SubjectIdOpt, SubjectsOpt, subject_table
from leukoscope.cli.progress import shown


@app.command("report")
def report_cmd(
    bundle: BundleArg,
    folders: Annotated[list[Path], typer.Argument(
        metavar="PATIENT_DIR...", help="One folder of cells per patient (read recursively; its name is the "
        "patient id). With --cohort: cohort folders as DeepAPL publishes them.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html, patients.csv and "
                                      "patients.json.")],
    cohort: Annotated[bool, typer.Option(
        "--cohort", help="Each folder is a cohort (master.csv beside All/, or the patients of --subjects): "
        "report every patient in it.")] = False,
    subjects: SubjectsOpt = None,
    subject_id: SubjectIdOpt = None,
    diagnosis: DiagnosisOpt = "diagnosis",
    drivers: Annotated[int, typer.Option("--drivers", min=1, help="Cells shown per patient in the gallery "
                                         "of the cells that drove the call.")] = 8,
) -> None:
    """Per patient: the call, its probability with a 95% interval, cells used and skipped, the cell-type
    composition with exact binomial intervals and the cells that drove the call. Cells unlike the training
    cohort's (the bundle's unfamiliarity score) are counted and left out of the call.

    Whole-field overview images and files that are not images are skipped and counted; a folder without
    cells is listed and left out. Exits 1 when no patient could be reported.
    """
    from leukoscope.bundle import load_bundle
    from leukoscope.errors import ConfigError
    from leukoscope.patients.report import REPORT_FILE, patient_bundle, percent, report_patients

    table = subject_table(subjects, subject_id, diagnosis)
    if table is not None and not cohort:
        raise ConfigError("--subjects: a table of patients goes with --cohort (a patient folder alone is "
                          "named by its folder)")
    b = patient_bundle(load_bundle(bundle))
    with shown() as bars:
        r = report_patients(b, folders, out, cohort=cohort, subjects=table, drivers=drivers, progress=bars)
    for p in r.patients:
        c = p.call
        interval = (f"95% {percent(c.interval[0])} - {percent(c.interval[1])}" if c.cells_used > 1
                    else "no interval from one cell")
        said = (f"P({escape(c.positive)}) {percent(c.probability)} ({interval})" if c.cells_used
                else "no probability: no cell left to call from")
        call = "[yellow]no call: too few cells[/]" if c.too_few else f"[bold]{escape(str(c.call))}[/]"
        note = " [yellow](interval spans the threshold)[/]" if p.uncertain() else ""
        console.print(f"{escape(p.subject)}: {call}  {said}, {c.cells_used} cell(s) used, "
                      f"{len(c.skipped)} skipped{note}", soft_wrap=True)
        if c.unfamiliar_note():
            console.print(f"  [yellow]{escape(str(c.unfamiliar_note()))}[/]", soft_wrap=True)
    if r.not_reported:
        console.print(f"[yellow]{len(r.not_reported)} folder(s) not reported:[/]")
        for folder, why in r.not_reported:
            say(f"  {folder}: {why}")
    say(f"wrote {Path(out) / REPORT_FILE}, patients.csv and patients.json")
