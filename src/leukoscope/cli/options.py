"""Arguments and options more than one command takes, defined once, and the registry choices their
help may name.

Conventions of every command: each argument and option has help text; the default is shown
(``App`` turns ``show_default`` on everywhere), and an option whose default is ``None`` says
what that means with ``show_default="..."``; choices are never written out by hand but named as
``{layouts}``, ``{feature_kinds}``, ... (``CHOICES``): they are filled from the registries when
that command's help is drawn, so listing them costs no command anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from leukoscope.data.cohort import SubjectTable


def _layouts() -> Iterable[str]:
    from leukoscope.data import LAYOUTS

    return LAYOUTS.names()


def _feature_kinds() -> Iterable[str]:
    from leukoscope.features import list_feature_kinds

    return list_feature_kinds()


def _models(family: str | None) -> Callable[[], Iterable[str]]:
    def names() -> Iterable[str]:
        from leukoscope.models.registry import list_models

        return list_models(family=family)

    return names


def _runtimes() -> Iterable[str]:
    from leukoscope.bundle.format import RUNTIMES

    return RUNTIMES


def _engines() -> Iterable[str]:
    from leukoscope.predict import ENGINES

    return ENGINES.names()


def _tune_metrics() -> Iterable[str]:
    from leukoscope.tune.settings import METRICS

    return METRICS


def _pruners() -> Iterable[str]:
    from leukoscope.tune.settings import PRUNERS

    return PRUNERS


def _stain_methods() -> Iterable[str]:
    from leukoscope.models.stain import METHODS

    return METHODS


def _class_maps() -> Iterable[str]:
    from leukoscope.data.classmap import shipped_maps

    return shipped_maps()


#: ``{name}`` in option help -> the registry's names (imported when a help that names it is drawn;
#: none of these imports torch, scikit-learn or onnxruntime).
CHOICES: dict[str, Callable[[], Iterable[str]]] = {
    "layouts": _layouts,
    "feature_kinds": _feature_kinds,
    "models": _models(None),
    "classical_models": _models("classical"),
    "network_models": _models("network"),
    "runtimes": _runtimes,
    "engines": _engines,
    "tune_metrics": _tune_metrics,
    "pruners": _pruners,
    "stain_methods": _stain_methods,
    "class_maps": _class_maps,
}


class _Choices(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ", ".join(CHOICES[key]())


def fill_choices(text: str) -> str:
    """``text`` with each ``{name}`` of ``CHOICES`` replaced by the registry's names."""
    return text.format_map(_Choices())


Paths = Annotated[list[Path], typer.Argument(help="Data set folders or CSV manifests.", show_default=False)]
LayoutOpt = Annotated[str | None, typer.Option("--layout", help="Force a layout: {layouts}.",
                                               show_default="detected")]
KindOpt = Annotated[str, typer.Option("--kind", "--features", help="Feature kind: {feature_kinds}.")]
SubjectsOpt = Annotated[
    Path | None, typer.Option("--subjects", show_default="none", help="Patient table (CSV), one row per "
                              "patient: reads each input as a cohort whose patient folders are named by its "
                              "ids (README).")]
SubjectIdOpt = Annotated[
    str | None, typer.Option("--subject-id", show_default="its first column",
                             help="Column of --subjects holding the patient id.")]
DiagnosisOpt = Annotated[
    str, typer.Option("--diagnosis", help="Column of --subjects holding the patient-level label.")]


def subject_table(subjects: Path | None, subject_id: str | None, diagnosis: str) -> SubjectTable | None:
    """The table ``--subjects --subject-id --diagnosis`` name, for ``read_data``; None without
    ``--subjects``, where naming its columns is refused rather than silently ignored."""
    from leukoscope.data.cohort import DEFAULT_DIAGNOSIS, load_subjects
    from leukoscope.errors import ConfigError

    if subjects is None:
        if subject_id is not None or diagnosis != DEFAULT_DIAGNOSIS:
            raise ConfigError("--subject-id and --diagnosis name columns of --subjects FILE; give it too")
        return None
    return load_subjects(subjects, subject_id, diagnosis)


#: ``leukoscope.data.rare.MIN_CELLS``, repeated so ``--help`` stays instant (a test keeps them equal).
MIN_CELLS = 30
MinCellsOpt = Annotated[int | None, typer.Option(
    "--min-cells", show_default=str(MIN_CELLS), help="Classes with fewer labelled cells are too rare to "
    "learn: merged or left out (--rare), and the outputs say which. 30 is ~6 cells per test fold of 5; 0 "
    "keeps every class.")]
RareOpt = Annotated[str | None, typer.Option(
    "--rare", show_default="other", help="What becomes of a rare class's cells: other (one merged class "
    "'other') or drop.")]

_CLASS_MAP_HELP = ("Map the data's labels onto common ones first (cross-lab work): a YAML / CSV file (source "
                   "label -> common label) or a shipped map ({class_maps}); cells of types the map drops are "
                   "left out and counted.")
ClassMapOpt = Annotated[str | None, typer.Option(
    "--class-map", show_default="labels as read", help=_CLASS_MAP_HELP)]
EvaluateClassMapOpt = Annotated[str | None, typer.Option(
    "--class-map", show_default="the map the bundle was trained with (train --class-map), else none",
    help=_CLASS_MAP_HELP)]

BundleArg = Annotated[Path, typer.Argument(
    help="A model bundle folder (from train or benchmark --save-best).", show_default=False)]
ImagesArg = Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or quoted globs.",
                                                show_default=False)]
TtaOpt = Annotated[bool, typer.Option("--tta", help="Test-time augmentation: mean over the 8 flips / "
                                      "90-degree rotations (8x slower).")]
AdaptOpt = Annotated[bool, typer.Option("--adapt", help=(
    "The images come from a new lab: adapt the model to them first, from the images alone, no labels "
    "(classical: their feature statistics and class frequencies; networks: their mean logits). For a mix "
    "of cells as on a smear (at least 50), not a folder of one type (it warns when 80 % take one class); "
    "each call then depends on the images it came with."))]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
RuntimeOpt = Annotated[str, typer.Option(
    "--runtime", help="Network runtime: {runtimes} (auto: ONNX Runtime when the bundle has a current "
    "export, int8 where it agreed with fp32 on 99 % of held-out cells and this CPU has VNNI; else PyTorch).")]
SplitFileOpt = Annotated[Path | None, typer.Option(
    "--split", show_default="a new grouped split", help="A split CSV (leukoscope data split --out): use "
    "exactly its sides; its files must be among the images given, with the same labels.")]
DedupeOpt = Annotated[bool | None, typer.Option(
    "--dedupe/--no-dedupe", show_default="dedupe", help="Keep each cluster of duplicate cells the audit "
    "finds (cached) in one group, so it never straddles two sides; --no-dedupe says so in every output.")]
