"""One progress protocol: every long library function reports through ``leukoscope.progress.Progress``
(each task moved on to its total, then done; nothing printed), and the CLI shows it with Rich."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from leukoscope.bundle import load_bundle
from leukoscope.data.readers import read
from leukoscope.progress import SILENT, Advance, Counting, Progress
from use_support import classical_bundle, network_bundle  # noqa: F401


class Recorder:
    """A ``Progress`` that keeps what it is told."""

    def __init__(self) -> None:
        self.totals: dict[str, int | None] = {}
        self.counts: dict[str, int] = {}
        self.finished: list[str] = []
        self.notes: list[str] = []
        self.epochs: list[Mapping[str, Any]] = []

    def task(self, description: str, total: int | None = None) -> Advance:
        self.totals[description], self.counts[description] = total, 0

        def advance(n: int) -> None:
            self.counts[description] += n

        return advance

    def done(self, description: str) -> None:
        self.finished.append(description)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.epochs.append(row)


def _describe(data: Path, tmp: Path, progress: Progress) -> None:
    from leukoscope.data.describe import describe

    describe(read([data / "cnmc_cells"]), progress=progress)


def _eda(data: Path, tmp: Path, progress: Progress) -> None:
    from leukoscope.eda import eda_report

    eda_report(read([data / "cnmc_cells"]), tmp / "eda", progress=progress)


def _extract(data: Path, tmp: Path, progress: Progress) -> None:
    from leukoscope.features import extract

    extract(read([data / "cnmc_cells"]), "handcrafted", cache=tmp, n_jobs=1, progress=progress, size=64)


def _audit(data: Path, tmp: Path, progress: Progress) -> None:
    from leukoscope.audit import audit

    audit(read([data / "cnmc_cells"]), n_jobs=1, progress=progress)


def _benchmark(data: Path, tmp: Path, progress: Progress) -> None:
    from leukoscope.leaderboard import benchmark

    benchmark(read([data / "cnmc_sample"]), k=2, models=["lda", "gaussian_nb"], jobs=1, cache=tmp,
              feature_params={"size": 64}, progress=progress)


CALLS: dict[str, tuple[Callable[[Path, Path, Progress], None], dict[str, int]]] = {
    "describe": (_describe, {"decoding": 11}),
    "eda_report": (_eda, {"decoding": 11}),
    "extract": (_extract, {"handcrafted features": 11}),
    "audit": (_audit, {"hashing": 11}),
    # the audit's hashing: duplicate clusters are grouped before the split (cached in ``tmp`` after)
    "benchmark": (_benchmark, {"hashing": 54, "handcrafted features": 54, "colour features": 54,
                               "models": 2}),
}


@pytest.mark.parametrize("name", CALLS)
def test_library_work_reports_each_task_to_its_total(name: str, data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    call, tasks = CALLS[name]
    rec = Recorder()
    call(data, tmp_path, rec)
    assert rec.totals == tasks and rec.counts == tasks and sorted(rec.finished) == sorted(tasks)
    assert capsys.readouterr().out == ""  # the library prints nothing
    call(data, tmp_path, SILENT)  # and needs no listener


def test_bundle_uses_report_through_it(data: Path, tmp_path: Path, network_bundle: Path,  # noqa: F811
                                       classical_bundle: Path) -> None:  # noqa: F811
    from leukoscope.explain import explain
    from leukoscope.predict.local import predict

    cells = data / "cnmc_cells"
    rec = Recorder()
    predict(load_bundle(network_bundle), [cells], tmp_path / "p.csv", batch_size=4, progress=rec)
    explain(load_bundle(classical_bundle), [cells / "hem"], tmp_path / "why", progress=rec)
    assert rec.totals == rec.counts == {"predicting": 11, "explaining": 4}
    assert rec.finished == ["predicting", "explaining"]
    seen: list[tuple[int, int | None]] = []
    predict(load_bundle(network_bundle), [cells], tmp_path / "q.csv", batch_size=4,
            progress=Counting(lambda done, total: seen.append((done, total))))
    assert seen == [(0, 11), (4, 11), (8, 11), (11, 11)]


def test_tune_counts_trials_and_notes_each_new_best(synthetic2: Path, tmp_path: Path) -> None:
    from leukoscope.tune import TuneSettings, tune

    rec = Recorder()
    tune(read([synthetic2]), TuneSettings(model="lda", cv=2, test=0.25), tmp_path / "run", n_trials=3,
         progress=rec)
    assert rec.totals["lda: trials"] == rec.counts["lda: trials"] == 3 and "lda: trials" in rec.finished
    assert rec.notes and all(n.endswith("the best so far") for n in rec.notes)


def test_rich_progress_draws_bars_notes_and_epochs() -> None:
    from rich.progress import Progress as Bars

    from leukoscope.cli.progress import RichProgress

    out = io.StringIO()
    with Bars(console=Console(file=out, width=200, force_terminal=False)) as bars:
        shown = RichProgress(bars)
        advance = shown.task("decoding [a]", 3)
        advance(2)
        assert [(t.description, t.completed, t.total) for t in bars.tasks] == [("decoding \\[a]", 2, 3)]
        shown.done("decoding [a]")
        assert bars.tasks == []
        shown.note("trial 3 failed: [bold]not markup[/]")
        shown.epoch({"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.75, "val_loss": 0.6,
                     "val_accuracy": 0.7, "val_balanced_accuracy": 0.65, "seconds": 4.2})
    text = out.getvalue()
    assert "trial 3 failed: [bold]not markup[/]" in text
    assert ("epoch   1  loss 0.5000  acc 0.750  val loss 0.6000  val acc 0.700  val bal. acc 0.650  (4 s)"
            in text)


def test_without_a_terminal_progress_is_plain_lines_on_stderr(capsys) -> None:
    """Into a log file or a pipe there are no bars to draw: notes and epochs are the same lines as
    on a terminal, written plainly, and Rich's bar display is not built."""
    from leukoscope.cli.progress import Lines, shown

    with shown() as progress:  # pytest's captured stderr is no terminal
        assert isinstance(progress, Lines)
        progress.task("decoding", 3)(2)
        progress.note("trial 3 failed: [bold]not markup[/]")
        progress.epoch({"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.75, "val_loss": 0.6,
                        "val_accuracy": 0.7, "val_balanced_accuracy": 0.65, "seconds": 4.2})
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        "trial 3 failed: [bold]not markup[/]",
        "epoch   1  loss 0.5000  acc 0.750  val loss 0.6000  val acc 0.700  val bal. acc 0.650  (4 s)"]


def test_evaluate_and_classical_training_report_through_it(data: Path, tmp_path: Path,
                                                           classical_bundle: Path) -> None:  # noqa: F811
    """These took ``on_progress`` callbacks or a training-only ``Reporter`` before the one protocol."""
    from leukoscope.evaluate.report import evaluate
    from leukoscope.train import TrainConfig, train

    rec = Recorder()
    evaluate(load_bundle(classical_bundle), read([data / "cnmc_cells"]), tmp_path / "ev", progress=rec)
    train(read([data / "cnmc_sample"]), TrainConfig.build(model="lda"), tmp_path / "run", rec)
    assert rec.totals == rec.counts == {"scoring": 11, "handcrafted features": 54, "fitting lda": 1}
    assert rec.finished == ["scoring", "handcrafted features", "fitting lda"]
