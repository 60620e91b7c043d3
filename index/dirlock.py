"""One serving process per data dir: a POSIX record lock on ``<data_dir>/.lock``.

Two processes would each hold their own FAISS copy that misses the other's writes, and one's
orphan cleanup could delete the other's in-flight upload. POSIX locks belong to the process, so
reopening a data dir inside the same process (tests, a reload after a simulated crash) works.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from index.errors import DataDirLocked


class DirLock:
    """An exclusive, non-blocking lock on a data dir, released by ``release`` or process exit."""

    def __init__(self, data_dir: Path) -> None:
        """Take the lock.

        Raises DataDirLocked when another process holds it, OSError when the file cannot be
        created.
        """
        self.path = data_dir / ".lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            raise DataDirLocked(
                f"{data_dir} is in use by another process; run one server per data dir "
                "(and send uploads to it rather than ingesting beside it)"
            ) from exc
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Drop the lock. Idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
