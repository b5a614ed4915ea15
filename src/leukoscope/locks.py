"""One writer at a time: an exclusive lock file held while a command writes its output.

``predict`` holds ``<out>.lock`` while it writes its CSV, ``train`` holds ``<run>/.lock`` while it writes
its run folder: a second command on the same output is refused at once, naming the first one's pid,
instead of the two overwriting each other's files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from leukoscope.errors import DataError


@contextmanager
def exclusive(lock: Path, busy: str) -> Iterator[None]:
    """Hold ``lock`` (a non-blocking ``flock``) for the ``with`` block; ``DataError(busy + pid)`` when
    another process holds it. The file is removed while still held, so a process that opened it
    meanwhile finds another file and tries again."""
    import fcntl

    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DataError(f"{lock}: cannot write it ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataError(f"{busy} (pid {pid})") from None
        try:
            held = os.stat(lock)
        except FileNotFoundError:
            held = None
        mine = os.fstat(fd)
        if held is not None and (held.st_dev, held.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the holder before us removed the file we locked: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
