"""Work in batches on every core: split a stream into batches, and map a function over them on
threads, results in input order.

Threads, not processes, because the heavy calls (Pillow decode and resize, numpy, ONNX Runtime)
release the GIL: two batches in flight keep two cores busy without copying images between processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def chunks(it: Iterable[T], n: int) -> Iterator[list[T]]:
    """``it`` in lists of ``n`` (the last one shorter), read lazily."""
    chunk: list[T] = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, yielding results in the order of ``items``.

    At most ``workers + 1`` items are taken ahead of the consumer, so memory stays flat on a stream
    of any length; with ``workers=1`` it is a prefetch (the next item is worked on while the
    consumer handles this one). An error in ``fn`` re-raises here, at its item; a consumer that
    stops early cancels what has not started.
    """
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="leukoscope-batch")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
