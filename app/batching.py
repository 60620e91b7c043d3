"""Dynamic micro-batching of concurrent text queries into one encoder forward pass.

No timer and no extra thread: the first caller to find the encoder idle becomes the leader and
encodes every query waiting at that moment in one batch, then the ones that arrived meanwhile,
until none is left. A lone query therefore runs at once, as without batching; under load, queries
that arrive while the encoder is busy share its next pass instead of competing for the cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("error", "lead", "result", "text", "wake")

    def __init__(self, text: str) -> None:
        self.text = text
        self.wake = threading.Event()
        self.lead = False
        self.result: T | None = None
        self.error: BaseException | None = None


class TextBatcher(Generic[T]):
    """Thread-safe front of ``encode(texts) -> one result per text`` (an (N, D) array, or the
    model's encoded queries) for one text at a time.

    ``max_batch`` caps the texts per forward pass (1 turns batching off). The leader encodes
    one batch, which holds its own query, then hands the lead to the oldest waiting query, so
    no caller serves others for longer than one pass.
    """

    def __init__(self, encode: Callable[[Sequence[str]], Iterable[T]], max_batch: int = 16
                 ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._encode = encode
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Job[T]] = []
        self._busy = False
        self.batches = 0
        self.texts = 0

    def encode_one(self, text: str) -> T:
        """``encode``'s result for ``text``; raises whatever ``encode`` raised for its batch."""
        if self.max_batch == 1:
            return next(iter(self._encode([text])))
        job: _Job[T] = _Job(text)
        with self._lock:
            self._queue.append(job)
            job.lead = not self._busy
            self._busy = True
        if not job.lead:
            job.wake.wait()
        if job.lead:
            self._run_batch()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _run_batch(self) -> None:
        """Encode the oldest waiting queries (the caller's first), then pass the lead on."""
        with self._lock:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        try:
            vectors = self._encode([j.text for j in batch])
        except BaseException as exc:  # handed to each caller of the batch, raised there
            for j in batch:
                j.error = exc
        else:
            for j, v in zip(batch, vectors, strict=True):
                j.result = v
        with self._lock:
            self.batches += 1
            self.texts += len(batch)
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].wake.set()
            else:
                self._busy = False
        for j in batch:
            if not j.lead:
                j.wake.set()
