"""The one ``leukoscope.progress.Progress`` every command shows.

On a terminal: Rich bars with ETA on stderr, notes and training epochs printed above them. Where
no one watches bars (stderr is a log file or a pipe), the same notes and epochs as plain lines,
without importing Rich (19 ms of every such command).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from leukoscope.cli.app import err_console, say
from leukoscope.filenames import printable
from leukoscope.progress import Advance, Silent

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def epoch_line(row: Mapping[str, Any]) -> str:
    """A finished training epoch as one line."""
    return (f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.3f}  "
            f"val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.3f}  "
            f"val bal. acc {row['val_balanced_accuracy']:.3f}  ({row['seconds']:.0f} s)")


def bar_display() -> Progress:
    """The bars every long command shows (with ETA), on stderr, gone when the work is."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                    console=err_console.rich, transient=True)


class Lines(Silent):
    """``Progress`` without bars: notes and epochs as plain lines on stderr."""

    def note(self, text: str) -> None:
        say(text, err=True)

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.note(epoch_line(row))


class RichProgress(Lines):
    """``Progress`` on a Rich bar display: one bar per task, a printed line per note and epoch."""

    def __init__(self, bars: Progress):
        self.bars = bars
        self.tasks: dict[str, TaskID] = {}

    def task(self, description: str, total: int | None = None) -> Advance:
        from rich.markup import escape

        tid = self.bars.add_task(escape(printable(description)), total=total)
        self.tasks[description] = tid
        return lambda n: self.bars.advance(tid, n)

    def done(self, description: str) -> None:
        tid = self.tasks.pop(description, None)
        if tid is not None:
            self.bars.remove_task(tid)

    def note(self, text: str) -> None:  # above the bars, which Rich redraws below it
        from rich.markup import escape

        self.bars.console.print(escape(printable(text)), soft_wrap=True)


@contextmanager
def shown() -> Iterator[Lines]:
    """The command's ``Progress`` for the block: ``with shown() as bars: work(progress=bars)``."""
    if not sys.stderr.isatty():
        yield Lines()
        return
    with bar_display() as bars:
        yield RichProgress(bars)
