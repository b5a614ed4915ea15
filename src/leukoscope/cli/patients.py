"""Patient-level ``train --target``, and ``evaluate`` / ``export`` of a patient bundle: thin CLI layers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import console, read_data, say
from leukoscope.cli.progress import shown

if TYPE_CHECKING:
    from leukoscope.data.cohort import SubjectTable
    from leukoscope.data.manifest import Manifest


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ci(v: Sequence[float] | None) -> str:
    return "-" if v is None else f"{v[0]:.3f}-{v[1]:.3f}"


def _skipped(items: list[dict[str, str]], where: Path) -> None:
    """Unreadable files one per line; byte copies of a cell the patient already has, counted."""
    copies = [s for s in items if s["reason"].startswith("byte copy of ")]
    if copies:
        console.print(f"{len(copies)} byte copies of cells already used counted once (listed in {where})")
    bad = [s for s in items if s not in copies]
    if bad:
        console.print(f"[yellow]{len(bad)} cell file(s) skipped:[/]")
        for s in bad:
            say(f"  {s['path']}: {s['reason']}")


def _patient_target(m: Manifest, target: str, subjects: SubjectTable | None) -> str:
    """The column ``--target`` names: ``diagnosis`` is the column ``--diagnosis`` names, also where the table
    has another column called Diagnosis (README: ``train COHORT --target diagnosis``). Data without a table
    are refused here, saying how to give one, before any work."""
    from leukoscope.data.cohort import DEFAULT_DIAGNOSIS, snake_case
    from leukoscope.errors import DataError

    if "subjects_file" not in m or m["subjects_file"].isna().all():
        raise DataError(f"--target {target!r}: these data have no subjects table; for a cohort not laid out "
                        f"as DeepAPL (Data/master.csv beside Data/All) give --subjects FILE (and "
                        f"--subject-id / --diagnosis to name its id and label columns)")
    if subjects is not None and snake_case(target) == DEFAULT_DIAGNOSIS:
        return subjects.diagnosis
    return target


def train_patients_cmd(paths: Sequence[Path], layout: str | None, out: Path, target: str,
                       model: str | None, positive: str | None, repeats: int | None, folds: int | None,
                       img_size: int | None, seed: int | None, subjects: SubjectTable | None = None) -> None:
    """``leukoscope train COHORT --target COLUMN``: repeated patient-grouped CV, then the patient bundle."""
    from leukoscope.patients.protocol import FOLDS, REPEATS
    from leukoscope.patients.train import DEFAULT_METHOD, train_patients

    m = read_data(paths, layout, subjects)
    target = _patient_target(m, target, subjects)
    features = {"input_size": img_size} if img_size else None
    with shown() as bars:
        r = train_patients(m, target, out, model or DEFAULT_METHOD, positive, repeats or REPEATS,
                           folds or FOLDS, seed or 0, features, progress=bars)
    table = Table(title=escape(f"{r['model']}: {r['target']} per patient ({r['protocol']}, "
                               f"{r['repeats']}x{r['folds']}), positive = {r['positive']}"))
    for col in ("patients", "ROC AUC", "sd", "95% CI", "sens.", "spec.", "bal. acc.", "cell AUC"):
        table.add_column(col, justify="right")
    table.add_row(f"{r['n_patients']} ({r['n_positive']} {escape(r['positive'])})", _f(r["roc_auc"]),
                  _f(r["roc_auc_std"]), _ci(r["roc_auc_ci95"]), _f(r["sensitivity"]), _f(r["specificity"]),
                  _f(r["balanced_accuracy"]), _f(r["cell_roc_auc"]))
    console.print(table)
    for w in r["warnings"]:
        console.print(f"[yellow]note:[/] {escape(w)}")
    _skipped(r["skipped"], Path(out) / "cv.json")
    console.print(f"sd: over the {r['repeats']} repeats; 95% CI: bootstrap over patients; sens. / spec. of "
                  f"{escape(r['positive'])} at the training-fold threshold; no call below "
                  f"{r['min_cells']} cells (AUC vs cells per patient)")
    say(f"bundle: {r['bundle']}  (figures: {Path(out) / 'cv.json'}, "
        f"per patient: {Path(out) / 'patients.csv'})")


def evaluate_patients_cmd(bundle: Any, paths: Sequence[Path], layout: str | None, out: Path,
                          subjects: SubjectTable | None = None, diagnosis: str | None = None) -> None:
    """``leukoscope evaluate PATIENT_BUNDLE COHORT``: patient- and cell-level figures. Each patient's label
    is the column the bundle was trained on, or the one ``--diagnosis`` names (given other than its
    default, or a table without the bundle's column)."""
    from leukoscope.data.cohort import DEFAULT_DIAGNOSIS
    from leukoscope.patients.evaluate import METRICS_FILE, evaluate_patients

    m = read_data(paths, layout, subjects)
    target = None  # the bundle's own
    named = diagnosis not in (None, DEFAULT_DIAGNOSIS)
    if subjects is not None and (named or bundle.config.get("target") not in subjects.table):
        target = subjects.diagnosis
    with shown() as bars:
        r = evaluate_patients(bundle, m, out, progress=bars, target=target)
    p, c = r["patient"], r["cell"]
    table = Table(title=escape(f"{r['model']} on {p['n_patients']} patients, {r['cells']} cells "
                               f"(positive = {r['positive']})"))
    table.add_column("figure")
    table.add_column("patient level", justify="right")
    table.add_column("cell level", justify="right")
    table.add_row("ROC AUC", f"{_f(p['roc_auc'])} ({_ci(p['roc_auc_ci95'])})", _f(c["roc_auc"]))
    table.add_row("balanced accuracy", _f(p["balanced_accuracy"]), _f(c["balanced_accuracy"]))
    table.add_row("sensitivity / specificity", f"{_f(p['sensitivity'])} / {_f(p['specificity'])}", "-")
    console.print(table)
    for w in r["warnings"]:
        console.print(f"[yellow]note:[/] {escape(w)}")
    _skipped(r["skipped"], Path(out) / METRICS_FILE)
    say(f"wrote {Path(out) / METRICS_FILE}, patients.csv and cells.csv")


def export_patients_cmd(bundle: Path, int8: bool) -> None:
    """``leukoscope export PATIENT_BUNDLE --onnx``: the cell embedding network as model.onnx."""
    from leukoscope.bundle.patient import export_patient_onnx
    from leukoscope.errors import ConfigError

    if int8:
        raise ConfigError("--int8 is for network bundles; a patient bundle exports its fp32 "
                          "embedding network")
    info = export_patient_onnx(bundle)
    say(f"wrote {info['fp32']} in {bundle}: the cell embedding network; the patient aggregator "
        "is in MODEL_CARD.md ('How a patient is scored')")
