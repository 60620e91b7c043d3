"""Stores as views of the change log: several stores (and processes) on one data dir, snapshots
that record their seq, and a data dir written before the log existed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from index import DataDirLocked, Store, Upload
from index.store import CATALOG_NAME
from index.vectors import VectorIndex

OpenStore = Callable[..., Store]
MakeUpload = Callable[..., Upload]
ROOT = Path(__file__).resolve().parents[2]


def hit_ids(store: Store, up: Upload, k: int = 5, tags: list[str] | None = None) -> list[int]:
    return [i for i, _ in store.search(up.embedding, k, tags=tags)[0]]


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``check()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the time allowed"
        time.sleep(0.01)
    return time.monotonic() - start


def test_writes_of_one_store_reach_another_through_the_log(
    open_store: OpenStore, make_upload: MakeUpload
) -> None:
    a = open_store(shared=True, follow_interval=60)  # no follower step during the test
    b = open_store(shared=True, follow_interval=60)
    (item, dup), = a.add_many([make_upload(1, tags=["x"])])
    assert not dup and hit_ids(a, make_upload(1))[0] == item.id  # the writer sees it at once
    assert b.seq == 0 and b.stats()["vectors"] == 0  # the other store has not looked yet
    # ... and its next search does: it applies the log before it reads (read your writes,
    # whichever process took the upload)
    assert hit_ids(b, make_upload(1))[0] == item.id
    assert b.seq == 1 and b.catch_up() == 0
    assert hit_ids(b, make_upload(1), tags=["x"]) == [item.id]
    b.delete(item.id)
    assert a.catch_up() == 1  # b's delete
    assert item.id not in hit_ids(a, make_upload(1))
    assert a.stats()["vectors"] == b.stats()["vectors"] == 0
    assert b.catch_up() == 1 and a.catch_up() == 0 and a.seq == b.seq == 2


def test_a_search_applies_what_was_logged_before_it_without_a_follower_step(
    open_store: OpenStore, make_upload: MakeUpload
) -> None:
    a = open_store(shared=True, follow_interval=60)
    b = open_store(shared=True, follow_interval=60)
    items = [item for item, _ in a.add_many([make_upload(i, tags=["t"]) for i in (4, 5, 6)])]
    assert hit_ids(b, make_upload(5), k=1) == [items[1].id]
    assert sorted(hit_ids(b, make_upload(5), tags=["t"])) == sorted(i.id for i in items)
    a.delete(items[1].id)
    assert items[1].id not in hit_ids(b, make_upload(5))
    assert b.stats()["vectors"] == 2  # the vector is gone from b's index, not only hidden


def test_a_follower_applies_other_writes_within_its_interval(
    open_store: OpenStore, make_upload: MakeUpload
) -> None:
    a = open_store(shared=True, follow_interval=0.05)
    b = open_store(shared=True, follow_interval=0.05)
    assert hit_ids(b, make_upload(2), tags=["t"]) == []  # caches the (empty) tag's ids
    (item, _), = a.add_many([make_upload(2, tags=["t"])])
    wait_until(lambda: hit_ids(b, make_upload(2), tags=["t"]) == [item.id])
    a.delete(item.id)
    wait_until(lambda: b.stats()["vectors"] == 0)


def test_the_same_bytes_from_two_stores_make_one_item(
    open_store: OpenStore, make_upload: MakeUpload
) -> None:
    a = open_store(shared=True)
    b = open_store(shared=True)
    (first, dup_a), = a.add_many([make_upload(3)])
    (second, dup_b), = b.add_many([make_upload(3)])
    assert (dup_a, dup_b) == (False, True) and second.id == first.id
    assert b.stats()["count"] == 1


def test_a_snapshot_records_its_seq_and_a_restart_replays_only_the_rest(
    open_store: OpenStore, make_upload: MakeUpload, tmp_path: Path
) -> None:
    store = open_store(snapshot_every=10_000)
    items = [it for it, _ in store.add_many([make_upload(i) for i in range(10)])]
    store.snapshot()
    snap = VectorIndex.load(tmp_path / "data" / "index" / "vectors.faiss", 16, "test-model")
    assert snap is not None and snap.seq == store.seq == 10
    store.delete(items[0].id)
    later = [it for it, _ in store.add_many([make_upload(i) for i in range(10, 13)])]
    # a crash: never closed; the reopened store replays the 4 changes after seq 10
    again = open_store()
    assert again.seq == 14 and again.stats()["vectors"] == 12
    assert items[0].id not in hit_ids(again, make_upload(0))
    for i, it in zip(range(10, 13), later, strict=True):
        assert hit_ids(again, make_upload(i))[0] == it.id


def test_a_data_dir_from_before_the_log_opens_with_every_item(
    open_store: OpenStore, make_upload: MakeUpload, tmp_path: Path
) -> None:
    store = open_store(snapshot_every=10_000)
    items = [it for it, _ in store.add_many([make_upload(i) for i in range(8)])]
    store.delete(items[2].id)
    store.snapshot()
    store.close()
    # What the previous version left: no change log, and a snapshot header without a seq.
    with sqlite3.connect(tmp_path / "data" / CATALOG_NAME) as conn:
        conn.execute("DROP TABLE changes")
        conn.execute("DELETE FROM meta WHERE key = 'schema_version'")
    snap_path = tmp_path / "data" / "index" / "vectors.faiss"
    old = VectorIndex.load(snap_path, 16, "test-model")
    assert old is not None
    old.save(snap_path, "test-model")  # seq=None: written as the old version did
    again = open_store(shared=True)
    kept = [it for it in items if it.id != items[2].id]
    assert again.stats()["count"] == again.stats()["vectors"] == 7
    for i, it in enumerate(items):
        if it in kept:
            assert hit_ids(again, make_upload(i))[0] == it.id
    (new, _), = again.add_many([make_upload(20)])
    assert again.seq == kept[-1].id and new.id == items[-1].id + 1


_OTHER_PROCESS = """
import sys
import numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import upload
from index import Store, DataDirLocked
try:
    store = Store.open(Path(sys.argv[1]), 16, "test-model", shared=sys.argv[3] == "shared")
except DataDirLocked:
    sys.exit(3)
((item, dup),) = store.add_many([upload(int(sys.argv[4]))])
store.close()
print(item.id)
"""


def _other_process(data_dir: Path, mode: str, seed: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(data_dir), str(Path(__file__).parent), mode,
         str(seed)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
        capture_output=True, text=True,
    )


def test_processes_share_a_data_dir_and_a_lone_holder_keeps_it(
    open_store: OpenStore, make_upload: MakeUpload, tmp_path: Path
) -> None:
    store = open_store(shared=True, follow_interval=0.05)
    done = _other_process(tmp_path / "data", "shared", 7)
    assert done.returncode == 0, done.stderr
    other_id = int(done.stdout.split()[-1])
    wait_until(lambda: hit_ids(store, make_upload(7))[:1] == [other_id])
    # the other process left nothing for the sharer to clean, and its file is served here
    path, _ = store.file_path(other_id)
    assert path.read_bytes() == make_upload(7).data
    # a process that wants the data dir alone is refused while it is shared
    assert _other_process(tmp_path / "data", "alone", 8).returncode == 3
    store.close()
    alone = open_store(tmp_path / "data")
    assert alone.stats()["count"] == 1
    assert _other_process(tmp_path / "data", "shared", 9).returncode == 3
    assert issubclass(DataDirLocked, Exception)


def test_follow_interval_must_be_positive(open_store: OpenStore) -> None:
    with pytest.raises(ValueError):
        open_store(shared=True, follow_interval=0)
