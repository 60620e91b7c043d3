"""Who may open a data dir: a POSIX record lock on ``<data_dir>/.lock``.

Two modes. *Exclusive* (the library's default, ``Store.open``): one process holds the data dir
alone, as before the change log; a second opener of either mode gets ``DataDirLocked``.
*Shared* (the server, its workers and ``fusion-search ingest``): any number of processes hold it
together, each following the others' writes through the catalog's change log. The first sharer
to find the directory free holds it alone for a moment, which is when start-up cleanup (orphan
files, temp files) is safe: no other process can be between writing a file and committing its
row. It then steps down to a shared hold. Whoever holds the file alone writes its pid and why
into it ("alone" or "cleaning"), so a sharer gives up at once on a process that keeps it alone
and waits for one that is only cleaning up.

POSIX locks belong to the process, so reopening a data dir inside the same process (tests, a
reload after a simulated crash) works.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from index.errors import DataDirLocked

# A sharer that starts while another one cleans up waits this long at most.
SHARED_WAIT_S = 30.0
# ... and gives up after this long when the holder says it keeps the data dir alone.
_ALONE_GRACE_S = 0.5
_POLL_S = 0.05


class DirLock:
    """A non-blocking lock on a data dir, released by ``release`` or process exit."""

    def __init__(self, data_dir: Path, shared: bool = False, wait: float = SHARED_WAIT_S) -> None:
        """Take the lock: alone, or ``shared`` with other sharers.

        ``alone`` tells whether no other process holds the data dir (always true for an
        exclusive lock); a sharer that is alone calls ``share`` once it has cleaned up.

        Raises DataDirLocked when another process holds it in a way this mode cannot join (a
        sharer waits up to ``wait`` seconds first), OSError when the file cannot be created.
        """
        self.path = data_dir / ".lock"
        self.shared = shared
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.alone = self._try(fcntl.LOCK_EX)
        if not self.alone and not (shared and self._wait_shared(wait)):
            os.close(self._fd)
            self._fd = None
            raise DataDirLocked(
                f"{data_dir} is in use by another process that holds it alone; run "
                "`fusion-search serve --workers N` for several server processes, and "
                "`fusion-search ingest` beside a server, or stop that process"
                if shared
                else f"{data_dir} is in use by another process; run one server per data dir "
                "(and send uploads to it rather than ingesting beside it)"
            )
        if self.alone:
            self._say("cleaning" if shared else "alone")

    def _try(self, kind: int) -> bool:
        assert self._fd is not None
        try:
            fcntl.lockf(self._fd, kind | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _say(self, why: str) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()} {why}\n".encode(), 0)

    def _holder_keeps_it(self) -> bool:
        assert self._fd is not None
        return os.pread(self._fd, 64, 0).decode(errors="replace").strip().endswith("alone")

    def _wait_shared(self, wait: float) -> bool:
        start = time.monotonic()
        alone_since: float | None = None
        while not self._try(fcntl.LOCK_SH):
            now = time.monotonic()
            if not self._holder_keeps_it():
                alone_since = None
            elif alone_since is None:
                alone_since = now
            if now - start >= wait or (alone_since and now - alone_since >= _ALONE_GRACE_S):
                return False
            time.sleep(_POLL_S)
        return True

    def share(self) -> None:
        """Step down from holding the data dir alone to holding it with other sharers (an
        atomic change of the lock; a no-op for an exclusive lock or one already shared)."""
        if self._fd is None or not self.shared or not self.alone:
            return
        self._say("shared")
        fcntl.lockf(self._fd, fcntl.LOCK_SH)
        self.alone = False

    def release(self) -> None:
        """Drop the lock. Idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
