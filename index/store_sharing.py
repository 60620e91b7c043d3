"""How one process holds a data dir: alone (the library's default) or shared with other
processes (the server's workers, an ingest beside a server), and what sharing needs.

Shared, every process may commit catalog rows; writes (file, then row; or row, then file
removal) take turns through ``<data_dir>/.write.lock``, so a duplicate check and its insert, or
a "no row uses this file" check and the file's removal, are never split by another process's
write. One process at a time writes the FAISS snapshot (``index/.snapshot.lock``). Each
process's ``Follower`` applies the others' writes to its own vector copy.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from index.dirlock import DirLock
from index.follower import Follower
from index.locks import FileLock

__all__ = ["DataDirAccess"]

WRITE_LOCK_NAME = ".write.lock"
SNAPSHOT_LOCK_NAME = ".snapshot.lock"


class DataDirAccess:
    """The data dir's locks as this process holds them, and its follower thread."""

    def __init__(self, data_dir: Path, index_dir: Path, shared: bool) -> None:
        """Take the data dir (see ``DirLock``).

        Raises DataDirLocked when another process holds it in a way this mode cannot join,
        OSError when a lock file cannot be created.
        """
        self.shared = shared
        self.dir_lock = DirLock(data_dir, shared=shared)
        self._writers: FileLock | None = None
        self.snapshot_lock: FileLock | None = None
        self._follower: Follower | None = None
        try:
            if shared:
                self._writers = FileLock(data_dir / WRITE_LOCK_NAME)
                self.snapshot_lock = FileLock(index_dir / SNAPSHOT_LOCK_NAME)
        except BaseException:
            self.close()
            raise

    @property
    def alone(self) -> bool:
        """True while no other process holds the data dir: start-up cleanup is safe."""
        return self.dir_lock.alone

    def cleaned_up(self) -> None:
        """Start-up cleanup is done: let other sharers in."""
        self.dir_lock.share()

    def writing(self) -> AbstractContextManager[None]:
        """Hold the data dir's write turn (nothing to hold for a process alone)."""
        return self._writers.hold() if self._writers is not None else nullcontext()

    def follow(
        self,
        step: Callable[[], int],
        interval: float,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        """Call ``step`` every ``interval`` seconds (or when ``wait`` returns early) on a thread
        until ``close``; only when shared: a process alone sees every write it makes."""
        if self.shared and self._follower is None:
            self._follower = Follower(step, interval, wait)
            self._follower.start()

    def stop_following(self) -> None:
        """Stop the follower thread, waiting for a step in progress. Idempotent."""
        if self._follower is not None:
            self._follower.stop()

    def close(self) -> None:
        """Stop following, close the lock files and release the data dir. Idempotent."""
        self.stop_following()
        for lock in (self._writers, self.snapshot_lock):
            if lock is not None:
                lock.close()
        self.dir_lock.release()
