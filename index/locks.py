"""Locks: a small readers-writer lock (FAISS searches may overlap each other but not an
add/remove), and a file lock that the processes writing one data dir take turns through."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers so it cannot starve.

    Not reentrant: a thread holding the read side must not take it again while a writer may be
    waiting, and must not take the write side.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared for the duration of the ``with`` block."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively for the duration of the ``with`` block."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            except BaseException:
                self._writers_waiting -= 1
                self._cond.notify_all()  # readers held back by this writer may go on
                raise
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class FileLock:
    """An exclusive lock shared by the processes that open the same file (``flock``), and by the
    threads of this one: many processes writing one data dir take turns through it.

    ``flock`` belongs to the open file, so two ``FileLock`` objects on one path exclude each
    other even inside one process; the lock goes with the process when it dies.
    """

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the lock file. Raises OSError when it cannot be created."""
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._threads = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block, waiting for it as long as it takes."""
        with self._threads:
            fd = self._open_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def hold_if_free(self) -> Iterator[bool]:
        """Hold the lock for the ``with`` block when nobody else does; yields whether it did."""
        if not self._threads.acquire(blocking=False):
            yield False
            return
        try:
            fd = self._open_fd()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _open_fd(self) -> int:
        if self._fd is None:
            raise OSError(f"the lock {self.path} is closed")
        return self._fd

    def close(self) -> None:
        """Close the file (releasing the lock if held). Idempotent."""
        with self._threads:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
