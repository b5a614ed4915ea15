"""How long library work reports what it does: one small protocol, and a default that reports nothing.

The library prints nothing (DESIGN): a long function takes a ``progress`` and tells it about its
tasks (a bar each, moved on step by step), lines worth showing (a failed trial) and, in training,
each finished epoch. The CLI passes Rich bars (``leukoscope.cli.progress``), a script or a test
may pass ``Counting``, and ``SILENT``, the default, drops everything.

This module is the bottom layer: it imports nothing of leukoscope.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

#: Moves a task on by ``n`` steps (images, batches, models, trials).
Advance = Callable[[int], None]


class Progress(Protocol):
    """What long work tells its caller."""

    def task(self, description: str, total: int | None = None) -> Advance:
        """Start a task of ``total`` steps (None: not known); the callable moves it on."""
        ...

    def done(self, description: str) -> None:
        """The task started with this description is over."""
        ...

    def note(self, text: str) -> None:
        """One line for the user (plain text), shown while the work goes on."""
        ...

    def epoch(self, row: Mapping[str, Any]) -> None:
        """A finished training epoch: ``epoch``, ``train_loss``, ``val_balanced_accuracy``, ..."""
        ...


def _still(n: int) -> None:
    """An ``Advance`` that goes nowhere."""


class Silent:
    """A ``Progress`` that reports nothing (the default of every function that takes one)."""

    def task(self, description: str, total: int | None = None) -> Advance:
        return _still

    def done(self, description: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def epoch(self, row: Mapping[str, Any]) -> None:
        pass


SILENT: Progress = Silent()


class Counting(Silent):
    """A ``Progress`` that calls ``on_count(done, total)`` each time a task moves on.

    For scripts and tests that want numbers, not bars: a benchmark timing first results, or a
    test stopping a run after so many images.
    """

    def __init__(self, on_count: Callable[[int, int | None], None]):
        self.on_count = on_count

    def task(self, description: str, total: int | None = None) -> Advance:
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            self.on_count(done, total)

        return advance
