"""Store end to end on a real data dir: durability, replay, corruption, filters, concurrency."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from index import (
    DataDirLocked,
    DimensionMismatch,
    IndexNotReady,
    Item,
    ItemNotFound,
    ModelMismatch,
    StorageFull,
    Store,
    Thresholds,
    Upload,
)
from index.catalog import Catalog
from index.files import FileStore
from index.vectors import VectorIndex

OpenStore = Callable[..., Store]
MakeUpload = Callable[..., Upload]
AddOne = Callable[[Store, Upload], tuple[Item, bool]]

# Flat until ~45 vectors, then HNSW32.
SMALL = Thresholds(flat_max=40, min_train=10_000)


def fill(store: Store, make_upload: MakeUpload, n: int, start: int = 0) -> dict[int, np.ndarray]:
    results = store.add_many([make_upload(i) for i in range(start, start + n)])
    return {
        item.id: make_upload(i).embedding
        for i, (item, _) in zip(range(start, n + start), results, strict=True)
    }


def assert_all_found(store: Store, vectors: dict[int, np.ndarray], k: int = 1) -> None:
    ids = list(vectors)
    hits = store.search(np.stack([vectors[i] for i in ids]), k)
    missing = [i for i, h in zip(ids, hits, strict=True) if i not in [j for j, _ in h]]
    assert missing == [], f"not found in top {k}: {missing}"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")


def test_add_then_get_list_search(
    open_store: OpenStore, make_upload: MakeUpload, add_one: AddOne
) -> None:
    store = open_store()
    up = make_upload(1, tags=["cat", " cat ", ""])
    item, duplicate = add_one(store, up)
    assert not duplicate
    assert (item.sha256, item.content_type, item.tags, item.bytes) == (
        up.sha256,
        "image/png",
        ["cat"],
        len(up.data),
    )
    assert store.get(item.id) == item and store.get_by_sha(up.sha256) == item
    path, ctype = store.file_path(item.id)
    assert path.read_bytes() == up.data and ctype == "image/png"
    [[(hit, score)]] = store.search(up.embedding, 1)
    assert hit == item.id and score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(store.embedding(item.id), up.embedding)
    np.testing.assert_array_equal(store.tokens([item.id])[0], up.tokens)
    assert store.stats() == {
        "count": 1,
        "vectors": 1,
        "factory": "Flat",
        "dim": 16,
        "snapshot_max_id": 0,
        "model": "test-model",
        "tombstones": 0,
    }


def test_persists_across_close_and_reopen(
    open_store: OpenStore, make_upload: MakeUpload, tmp_path: Path
) -> None:
    store = open_store()
    vectors = fill(store, make_upload, 30)
    store.close()
    again = open_store()
    assert again.stats()["count"] == 30 and again.stats()["snapshot_max_id"] == max(vectors)
    assert_all_found(again, vectors)


def test_rows_newer_than_the_snapshot_are_replayed(
    open_store: OpenStore, make_upload: MakeUpload
) -> None:
    store = open_store(snapshot_every=10_000)
    first = fill(store, make_upload, 20)
    store.snapshot()
    later = fill(store, make_upload, 15, start=20)
    gone = next(iter(first))
    store.delete(gone)
    # crash: the store is never closed, so the snapshot holds only the first 20 rows
    again = open_store()
    assert again.stats()["snapshot_max_id"] == max(first)
    assert again.stats()["vectors"] == 34
    first.pop(gone)
    assert_all_found(again, first | later)
    assert gone not in [i for i, _ in again.search(make_upload(0).embedding, 34)[0]]


@pytest.mark.parametrize(
    "damage", ["truncated", "zeroed", "garbage", "flipped", "wrong_dim", "missing"]
)
def test_unusable_snapshot_is_rebuilt_from_the_catalog(
    open_store: OpenStore, make_upload: MakeUpload, tmp_path: Path, damage: str
) -> None:
    store = open_store()
    vectors = fill(store, make_upload, 30)
    store.close()
    snap = tmp_path / "data" / "index" / "vectors.faiss"
    raw = snap.read_bytes()
    if damage == "truncated":
        snap.write_bytes(raw[: len(raw) - 50])
    elif damage == "zeroed":
        snap.write_bytes(bytes(len(raw)))
    elif damage == "garbage":
        snap.write_bytes(os.urandom(len(raw)))
    elif damage == "flipped":
        snap.write_bytes(raw[:-10] + bytes(b ^ 0x55 for b in raw[-10:]))
    elif damage == "wrong_dim":
        other = VectorIndex.create(4, "Flat")
        other.add([1], np.ones((1, 4), np.float32) / 2)
        other.save(snap, model="test-model")
    else:
        snap.unlink()
    again = open_store()
    assert again.stats()["vectors"] == 30
    assert_all_found(again, vectors)
    assert VectorIndex.load(snap, 16, "test-model") is not None, "a good snapshot replaces it"


def test_duplicate_returns_existing_without_writing(
    open_store: OpenStore, make_upload: MakeUpload, add_one: AddOne, tmp_path: Path
) -> None:
    store = open_store()
    first, dup = add_one(store, make_upload(1))
    again, dup2 = add_one(store, make_upload(1))
    assert (dup, dup2) == (False, True) and again == first
    batch = store.add_many([make_upload(2), make_upload(1), make_upload(2)])
    assert [d for _, d in batch] == [False, True, True]
    placeholder = Upload(**{**make_upload(1).__dict__, "embedding": np.zeros(16, np.float32)})
    assert store.add_many([placeholder]) == [(first, True)], "zeros are fine for a duplicate"
    assert batch[2][0] == batch[0][0] and batch[1][0] == first
    assert store.stats()["count"] == 2 and store.stats()["vectors"] == 2
    assert len(files_under(tmp_path / "data" / "files")) == 2


def test_delete_removes_row_vector_and_file(
    open_store: OpenStore, make_upload: MakeUpload, add_one: AddOne
) -> None:
    store = open_store()
    vectors = fill(store, make_upload, 10)
    victim = next(iter(vectors))
    path, _ = store.file_path(victim)
    deleted = store.delete(victim)
    assert deleted.id == victim and not path.exists()
    with pytest.raises(ItemNotFound):
        store.get(victim)
    with pytest.raises(ItemNotFound):
        store.delete(victim)
    with pytest.raises(ItemNotFound):
        store.file_path(victim)
    hits = store.search(vectors[victim], 10)[0]
    assert victim not in [i for i, _ in hits] and len(hits) == 9
    # the same image uploaded again is a new item, not a duplicate
    item, dup = add_one(store, make_upload(0))
    assert not dup and item.id > max(vectors) and store.file_path(item.id)[0].exists()


def test_pagination_newest_first(open_store: OpenStore, make_upload: MakeUpload) -> None:
    store = open_store()
    ids = sorted(fill(store, make_upload, 25))
    page, total = store.list(offset=0, limit=10)
    assert total == 25 and [i.id for i in page] == ids[::-1][:10]
    page, total = store.list(offset=10, limit=10)
    assert [i.id for i in page] == ids[::-1][10:20]
    page, total = store.list(offset=20, limit=10)
    assert [i.id for i in page] == ids[::-1][20:] and total == 25
    assert store.list(offset=30, limit=10) == ([], 25)


@pytest.mark.parametrize(
    "thresholds",
    [
        Thresholds(),  # Flat, exact scan of the few matching vectors
        Thresholds(exact_filter_max=0),  # Flat with a FAISS id filter
        Thresholds(flat_max=40, min_train=10_000, exact_filter_max=0),  # HNSW with a filter
    ],
    ids=["exact", "flat-selector", "hnsw-selector"],
)
def test_tag_filter_returns_k_hits_even_when_rare(
    open_store: OpenStore, make_upload: MakeUpload, thresholds: Thresholds
) -> None:
    store = open_store(thresholds=thresholds)
    uploads = [make_upload(i, tags=["rare"] if i % 24 == 7 else ["common"]) for i in range(120)]
    results = store.add_many(uploads)
    rare = {item.id for item, _ in results if "rare" in item.tags}
    assert len(rare) == 5
    page, total = store.list(0, 50, tag="rare")
    assert total == 5 and {i.id for i in page} == rare
    hits = store.search(np.stack([u.embedding for u in uploads[:3]]), 5, tags=["rare"])
    for row in hits:
        assert {i for i, _ in row} == rare
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
    assert store.search(uploads[0].embedding, 5, tags=["rare", "common"]) == [[]]
    assert store.search(uploads[0].embedding, 5, tags=["nobody"]) == [[]]
    one = next(iter(rare))
    assert one not in [
        i for i, _ in store.search(uploads[7].embedding, 5, tags=["rare"], exclude_ids=[one])[0]
    ]


def test_exclude_ids(open_store: OpenStore, make_upload: MakeUpload) -> None:
    store = open_store()
    vectors = fill(store, make_upload, 10)
    me = next(iter(vectors))
    hits = store.search(vectors[me], 3, exclude_ids=[me])[0]
    assert me not in [i for i, _ in hits] and len(hits) == 3


def test_orphan_and_temp_files_are_cleaned_at_open(
    open_store: OpenStore, make_upload: MakeUpload, add_one: AddOne, tmp_path: Path
) -> None:
    store = open_store()
    kept, _ = add_one(store, make_upload(1))
    store.close()
    files = FileStore(tmp_path / "data" / "files")
    orphan = make_upload(2)
    orphan_name = files.put(orphan.data, orphan.sha256, "png")
    temp = files.path(orphan_name).parent / ".half-written.tmp"
    temp.write_bytes(b"partial")
    index_temp = tmp_path / "data" / "index" / ".vectors.faiss.123.tmp"
    index_temp.write_bytes(b"partial")
    again = open_store()
    assert files.list_names() == [kept.file]
    assert not temp.exists() and not index_temp.exists()
    assert again.file_path(kept.id)[0].exists()


def test_other_dimension_or_model_refuses_to_open(
    open_store: OpenStore, make_upload: MakeUpload, add_one: AddOne, tmp_path: Path
) -> None:
    store = open_store()
    add_one(store, make_upload(1))
    store.close()
    with pytest.raises(DimensionMismatch, match="re-embed"):
        Store.open(tmp_path / "data", 32, "test-model")
    with pytest.raises(ModelMismatch):
        Store.open(tmp_path / "data", 16, "another-model")
    assert open_store().stats()["count"] == 1, "a failed open leaves the data dir usable"


def test_disk_full_while_writing_the_file(
    open_store: OpenStore,
    make_upload: MakeUpload,
    add_one: AddOne,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store()

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", full)
        with pytest.raises(StorageFull):
            add_one(store, make_upload(1))
    assert store.stats()["count"] == 0 and store.stats()["vectors"] == 0
    assert files_under(tmp_path / "data" / "files") == []
    assert add_one(store, make_upload(1))[1] is False, "works again once there is space"


def test_disk_full_in_sqlite_drops_the_file(
    open_store: OpenStore, make_upload: MakeUpload, add_one: AddOne, tmp_path: Path
) -> None:
    store = open_store()
    add_one(store, make_upload(1))
    writer = store._catalog._writer  # cap the database at its current size: SQLITE_FULL
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")
    big = make_upload(2)
    big = Upload(**{**big.__dict__, "tokens": np.ones((64, 512), np.float16)})
    with pytest.raises(StorageFull):
        add_one(store, big)
    assert store.stats()["count"] == 1 and store.stats()["vectors"] == 1
    assert len(files_under(tmp_path / "data" / "files")) == 1
    writer.execute("PRAGMA max_page_count = 1073741823")
    assert add_one(store, big)[1] is False


def test_catalog_failure_removes_the_new_file(
    open_store: OpenStore,
    make_upload: MakeUpload,
    add_one: AddOne,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store()

    def fail(self: Catalog, news: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Catalog, "add_many", fail)
    with pytest.raises(sqlite3.OperationalError):
        add_one(store, make_upload(1))
    assert files_under(tmp_path / "data" / "files") == []


def test_grows_from_flat_to_hnsw_and_keeps_it(
    open_store: OpenStore, make_upload: MakeUpload
) -> None:
    store = open_store(thresholds=SMALL)
    vectors: dict[int, np.ndarray] = {}
    factories = []
    for i in range(60):
        vectors |= fill(store, make_upload, 1, start=i)
        factories.append(store.stats()["factory"])
    assert factories[40] == "Flat", "no switch right at the threshold (hysteresis)"
    assert factories[-1] == "HNSW32" and factories.index("HNSW32") > 40
    assert_all_found(store, vectors)
    store.close()
    again = open_store(thresholds=SMALL)
    assert again.stats()["factory"] == "HNSW32"
    assert_all_found(again, vectors)


def test_configured_ivf_waits_for_training_data(
    open_store: OpenStore, make_upload: MakeUpload
) -> None:
    store = open_store(factory="IVF4,SQ8")
    vectors = fill(store, make_upload, 3)
    assert store.stats()["factory"] == "Flat", "too few vectors to train 4 lists"
    vectors |= fill(store, make_upload, 30, start=3)
    assert store.stats()["factory"] == "IVF4,SQ8"
    gone = list(vectors)[:5]
    for item_id in gone:
        store.delete(item_id)
    hits = store.search(np.stack([vectors[i] for i in gone]), 5)
    assert not set(gone) & {i for row in hits for i, _ in row}
    assert_all_found(store, {i: v for i, v in vectors.items() if i not in gone}, k=3)


def test_bad_factory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Store.open(tmp_path / "data", 16, "m", factory="NotAnIndex")


def test_hnsw_deletions_are_filtered_then_compacted(
    open_store: OpenStore, make_upload: MakeUpload
) -> None:
    thresholds = Thresholds(flat_max=40, min_train=10_000, compact_min=12, compact_fraction=0.2)
    store = open_store(thresholds=thresholds)
    vectors = fill(store, make_upload, 60)
    assert store.stats()["factory"] == "HNSW32"
    gone = list(vectors)[:10]
    for item_id in gone:
        store.delete(item_id)
    assert store.stats()["tombstones"] == 10 and store.stats()["vectors"] == 50
    for row in store.search(np.stack([vectors[i] for i in gone]), 10):
        assert len(row) == 10 and not set(gone) & {i for i, _ in row}
    store.close()
    store = open_store(thresholds=thresholds)
    assert store.stats()["vectors"] == 50
    for row in store.search(np.stack([vectors[i] for i in gone]), 10):
        assert not set(gone) & {i for i, _ in row}
    for item_id in list(vectors)[10:13]:
        store.delete(item_id)
    assert store.stats()["tombstones"] == 0, "past compact_min: rebuilt without the dead"
    assert store.stats()["vectors"] == 47


def test_concurrent_searches_while_adding(open_store: OpenStore, make_upload: MakeUpload) -> None:
    store = open_store(thresholds=SMALL)  # crosses Flat -> HNSW mid-way
    added: list[tuple[int, np.ndarray]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        try:
            while not stop.is_set():
                if not added:
                    time.sleep(0.001)
                    continue
                item_id, vector = added[np.random.randint(len(added))]
                hits = store.search(vector, 5)[0]
                ids = [i for i, _ in hits]
                assert item_id in ids
                assert len(set(ids)) == len(ids) and -1 not in ids
                assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(80):
        up = make_upload(i)
        ((item, _),) = store.add_many([up])
        added.append((item.id, up.embedding))
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert store.stats()["factory"] == "HNSW32" and store.stats()["vectors"] == 80


def test_snapshots_are_written_periodically(open_store: OpenStore, make_upload: MakeUpload) -> None:
    store = open_store(snapshot_every=10)
    fill(store, make_upload, 9)
    assert store.stats()["snapshot_max_id"] == 0
    vectors = fill(store, make_upload, 1, start=9)
    assert store.stats()["snapshot_max_id"] == max(vectors)


def test_closed_store_refuses(
    open_store: OpenStore, make_upload: MakeUpload, add_one: AddOne
) -> None:
    store = open_store()
    store.close()
    store.close()
    with pytest.raises(IndexNotReady):
        store.search(np.zeros(16, np.float32), 1)
    with pytest.raises(IndexNotReady):
        add_one(store, make_upload(1))


def test_bad_inputs(open_store: OpenStore, make_upload: MakeUpload, add_one: AddOne) -> None:
    store = open_store()
    up = make_upload(1)
    with pytest.raises(DimensionMismatch):
        add_one(store, Upload(**{**up.__dict__, "embedding": np.ones(8, np.float32)}))
    with pytest.raises(ValueError):
        add_one(store, Upload(**{**up.__dict__, "sha256": make_upload(2).sha256}))
    with pytest.raises(ValueError):
        add_one(store, Upload(**{**up.__dict__, "embedding": np.zeros(16, np.float32)}))
    with pytest.raises(ValueError):
        store.search(up.embedding, 0)
    with pytest.raises(DimensionMismatch):
        store.search(np.ones((2, 8), np.float32), 3)
    assert store.stats()["count"] == 0


def test_a_second_process_cannot_open_the_data_dir(open_store: OpenStore, tmp_path: Path) -> None:
    open_store()
    code = (
        "import sys; from pathlib import Path; from index import Store, DataDirLocked\n"
        "try:\n    Store.open(Path(sys.argv[1]), 16, 'test-model')\n"
        "except DataDirLocked:\n    sys.exit(3)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=60,
    )
    assert done.returncode == 3
    assert issubclass(DataDirLocked, Exception)


def test_untrainable_choice_falls_back_to_flat_without_rebuilding_every_add(
    open_store: OpenStore, make_upload: MakeUpload, caplog: pytest.LogCaptureFixture
) -> None:
    # A 1-byte budget asks for IVF-PQ, whose codebooks cannot train on a few dozen vectors.
    tight = Thresholds(flat_max=10, hnsw_max=10, min_train=20)
    store = open_store(thresholds=tight, memory_budget=1)
    with caplog.at_level(logging.INFO, logger="index.store"):
        vectors: dict[int, np.ndarray] = {}
        for i in range(40):
            vectors |= fill(store, make_upload, 1, start=i)
    builds = [r for r in caplog.records if r.getMessage().startswith("building")]
    assert store.stats()["factory"] == "Flat"
    assert builds == [], "no rebuild after the one at open"
    assert_all_found(store, vectors)


_WRITER = """
import hashlib, sys
from pathlib import Path
import numpy as np
from index import Store

store = Store.open(Path(sys.argv[1]), 16, "test-model", snapshot_every=7)
for i in range(100_000):
    data = f"crash image #{i}".encode()
    vec = np.random.default_rng(i).standard_normal(16).astype(np.float32)
    item, _ = store.add(data, sha256=hashlib.sha256(data).hexdigest(), ext="png",
                        content_type="image/png", embedding=vec / np.linalg.norm(vec))
    print(item.id, i, flush=True)
"""


@pytest.mark.slow
def test_acknowledged_adds_survive_kill_9(open_store: OpenStore, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path / "data")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acked: dict[int, int] = {}
    try:
        for line in child.stdout:
            item_id, seed = map(int, line.split())
            acked[item_id] = seed
            if len(acked) == 40:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert len(acked) == 40
    store = open_store()
    assert store.integrity_check() == "ok"
    assert store.stats()["count"] >= 40
    vectors = {}
    for item_id, seed in acked.items():
        store.get(item_id)
        vec = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
        vectors[item_id] = vec / np.linalg.norm(vec)
    assert_all_found(store, vectors)
    assert not [p for p in (tmp_path / "data").rglob("*.tmp")]


def test_embeddings_in_the_order_asked(open_store: OpenStore, make_upload: MakeUpload,
                                       add_one: AddOne) -> None:
    store = open_store()
    ups = [make_upload(i) for i in range(3)]
    items = [add_one(store, up)[0] for up in ups]
    order = [items[2].id, items[0].id, items[2].id]
    got = store.embeddings(order)
    np.testing.assert_array_equal(got, np.stack([ups[2].embedding, ups[0].embedding,
                                                 ups[2].embedding]))
    with pytest.raises(ItemNotFound):
        store.embeddings([items[1].id, 10**9])
