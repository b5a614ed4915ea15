"""The one ``leukoscope.progress.Progress`` every command shows: Rich bars with ETA on stderr, notes and
training epochs printed above them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from leukoscope.cli.app import err_console, printable
from leukoscope.progress import Advance


def bar_display() -> Progress:
    """The bars every long command shows (with ETA), on stderr, gone when the work is."""
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                    console=err_console, transient=True)


class RichProgress:
    """``Progress`` on a Rich bar display: one bar per task, a printed line per note and epoch."""

    def __init__(self, bars: Progress):
        self.bars = bars
        self.tasks: dict[str, TaskID] = {}

    def task(self, description: str, total: int | None = None) -> Advance:
        tid = self.bars.add_task(escape(printable(description)), total=total)
        self.tasks[description] = tid
        return lambda n: self.bars.advance(tid, n)

    def done(self, description: str) -> None:
        tid = self.tasks.pop(description, None)
        if tid is not None:
            self.bars.remove_task(tid)

    def note(self, text: str) -> None:
        self.bars.console.print(escape(printable(text)), soft_wrap=True)

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.note(f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.3f}  "
                  f"val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.3f}  "
                  f"val bal. acc {row['val_balanced_accuracy']:.3f}  ({row['seconds']:.0f} s)")


@contextmanager
def shown() -> Iterator[RichProgress]:
    """A ``RichProgress`` for the length of the block: ``with shown() as bars: work(progress=bars)``."""
    with bar_display() as bars:
        yield RichProgress(bars)
