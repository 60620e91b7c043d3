"""app.batching.TextBatcher: concurrent single-text calls share forward passes and each caller
gets its own text's vector (or its batch's error)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from app.batching import TextBatcher


class SlowEncoder:
    """Maps each text to a vector derived from it; records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.02, fail_on: str | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[int] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        time.sleep(self.delay)
        if self.fail_on in texts:
            raise RuntimeError("encoder failed")
        return np.array([[float(len(t)), float(sum(map(ord, t)))] for t in texts])


def expected(text: str) -> np.ndarray:
    return np.array([float(len(text)), float(sum(map(ord, text)))])


def run_threads(batcher: TextBatcher, texts: Sequence[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    start = threading.Barrier(len(texts))

    def call(t: str) -> None:
        start.wait()
        try:
            out[t] = batcher.encode_one(t)
        except Exception as exc:
            out[t] = exc

    threads = [threading.Thread(target=call, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10)
    assert not any(th.is_alive() for th in threads)
    return out


def test_a_lone_query_runs_at_once() -> None:
    enc = SlowEncoder(delay=0.0)
    b = TextBatcher(enc)
    np.testing.assert_array_equal(b.encode_one("a red circle"), expected("a red circle"))
    assert enc.calls == [1]


class GatedEncoder(SlowEncoder):
    """Its first pass holds until ``ready()`` is true (polled), instead of sleeping and hoping
    the other callers arrive meanwhile."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__(delay=0.0)
        self.ready = ready

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not self.calls:
            deadline = time.monotonic() + 10
            while not self.ready():
                assert time.monotonic() < deadline, "the other callers never queued"
                time.sleep(0.001)
        return super().__call__(texts)


def test_concurrent_queries_share_passes_and_get_their_own_vectors() -> None:
    texts = [f"query number {i}" for i in range(12)]
    b: TextBatcher
    # the first caller leads a pass of its own query; it finishes once the other eleven queue
    enc = GatedEncoder(lambda: len(b._queue) == len(texts) - 1)
    b = TextBatcher(enc, max_batch=16)
    out = run_threads(b, texts)
    for t in texts:
        np.testing.assert_array_equal(out[t], expected(t))  # type: ignore[arg-type]
    assert enc.calls == [1, len(texts) - 1]  # the eleven that waited share one pass
    assert b.texts == len(texts) and b.batches == 2


def test_batches_never_exceed_max_batch() -> None:
    enc = SlowEncoder()
    out = run_threads(TextBatcher(enc, max_batch=3), [f"t{i}" for i in range(10)])
    assert len(out) == 10 and max(enc.calls) <= 3 and sum(enc.calls) == 10


def test_an_error_reaches_every_caller_of_that_batch_and_no_other() -> None:
    enc = SlowEncoder(fail_on="bad")
    b = TextBatcher(enc, max_batch=16)
    out = run_threads(b, ["bad", *[f"ok {i}" for i in range(5)]])
    assert isinstance(out["bad"], RuntimeError)
    failed = {t for t, v in out.items() if isinstance(v, RuntimeError)}
    for t, v in out.items():
        if t not in failed:
            np.testing.assert_array_equal(v, expected(t))  # type: ignore[arg-type]
    # the batcher recovers: the next call runs normally
    np.testing.assert_array_equal(b.encode_one("after"), expected("after"))


def test_max_batch_one_calls_through() -> None:
    enc = SlowEncoder(delay=0.0)
    b = TextBatcher(enc, max_batch=1)
    run_threads(b, [f"t{i}" for i in range(4)])
    assert enc.calls == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        TextBatcher(enc, max_batch=0)
