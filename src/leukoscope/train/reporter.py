"""What training tells its caller (a ``Reporter``): the CLI shows bars, the library prints nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Reporter(Protocol):
    """Progress of a training run: tasks with a total, then one row per finished epoch."""

    def task(self, description: str, total: int) -> Callable[[int], None]: ...

    def done(self, description: str) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...


class SilentReporter:
    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n: None

    def done(self, description: str) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        pass
