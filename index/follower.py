"""``Follower``: a daemon thread that keeps one process's vector copy up to date with the writes
of the other processes sharing its data dir, by applying the catalog's change log every
``interval`` seconds (``FUSION_FOLLOW_INTERVAL``).

It polls, for either catalog backend: SQLite has no notifications, and the query (``seq`` above
a number, on the primary key) costs well under a millisecond when nothing changed. A catalog
that can say when something changed (PostgreSQL's LISTEN/NOTIFY: ``wait_for_change``) wakes it
at once instead; the interval then bounds the wait, so a lost notification costs one interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from index.errors import IndexNotReady

__all__ = ["Follower"]

log = logging.getLogger(__name__)


class Follower:
    """Calls ``step`` every ``interval`` seconds on its own thread until ``stop``."""

    def __init__(
        self,
        step: Callable[[], int],
        interval: float,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        """``wait(timeout)``, when given, returns early when there may be something to apply.

        Raises ValueError for an interval that is not positive.
        """
        if interval <= 0:
            raise ValueError("the follow interval must be positive")
        self._step = step
        self._wait = wait
        self.interval = interval
        self._stop = threading.Event()
        self._failing = False  # log the first failure of a streak, not one every interval
        self._thread = threading.Thread(target=self._run, name="fusion-follower", daemon=True)

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def _pause(self) -> None:
        if self._wait is not None:
            try:
                self._wait(self.interval)
                return
            except Exception as exc:  # e.g. the database is unreachable: poll meanwhile
                log.debug("waiting for a change notification failed: %s", exc)
        self._stop.wait(self.interval)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pause()
            if self._stop.is_set():
                return
            try:
                self._step()
            except IndexNotReady:  # the store closed under it
                return
            except Exception as exc:  # never let the thread die: the next poll tries again
                if not self._failing:
                    log.exception("following the change log failed; retrying every %.2f s",
                                  self.interval)
                else:
                    log.debug("following the change log still fails: %s", exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("following the change log again")
                self._failing = False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop and wait for the thread (a step in progress finishes). Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
