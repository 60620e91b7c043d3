"""VectorIndex on real FAISS: snapshots, corrupt files, removal per family, filtered search."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index.errors import DimensionMismatch
from index.locks import RWLock
from index.vectors import MAGIC, VectorIndex

DIM = 12


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return np.arange(100, 100 + n, dtype=np.int64), vecs


def filled(factory: str, n: int = 300) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    ids, vecs = data(n)
    index = VectorIndex.create(DIM, factory)
    if not index.is_trained:
        index.train(vecs)
    index.add(ids, vecs)
    return index, ids, vecs


def top_ids(index: VectorIndex, query: np.ndarray, k: int = 5, **kw: object) -> list[int]:
    return [i for i, _ in index.search(query, k, **kw)[0]]  # type: ignore[arg-type]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,SQ8"])
def test_save_load_round_trip(tmp_path: Path, factory: str) -> None:
    index, ids, vecs = filled(factory)
    path = tmp_path / "vectors.faiss"
    index.save(path, model="m")
    loaded = VectorIndex.load(path, DIM, "m")
    assert loaded is not None
    assert (loaded.factory, loaded.ntotal, loaded.max_id) == (factory, 300, int(ids.max()))
    assert loaded.search(vecs[:10], 5) == index.search(vecs[:10], 5)
    assert not list(tmp_path.glob(".*.tmp"))


def corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "zeroed":
        path.write_bytes(bytes(len(raw)))
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(1).bytes(len(raw)))
    elif how == "flipped":
        flipped = bytearray(raw)
        flipped[-100] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "header":
        path.write_bytes(MAGIC + b"\xff\xff\xff\x7f{")
    elif how == "bad_json":
        head = json.dumps({"format": 1}).encode()
        path.write_bytes(MAGIC + len(head).to_bytes(4, "little") + head)


@pytest.mark.parametrize(
    "how", ["truncated", "zeroed", "garbage", "flipped", "empty", "header", "bad_json"]
)
def test_corrupt_snapshot_loads_as_none(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    index, _, _ = filled("Flat")
    path = tmp_path / "vectors.faiss"
    index.save(path)
    corrupt(path, how)
    with caplog.at_level(logging.WARNING, logger="index.vectors"):
        assert VectorIndex.load(path, DIM) is None
    assert "ignoring vector snapshot" in caplog.text


def test_snapshot_of_another_dim_or_model_loads_as_none(tmp_path: Path) -> None:
    index, _, _ = filled("Flat")
    path = tmp_path / "vectors.faiss"
    index.save(path, model="m")
    assert VectorIndex.load(path, DIM + 1, "m") is None
    assert VectorIndex.load(path, DIM, "other") is None
    assert VectorIndex.load(tmp_path / "missing.faiss", DIM) is None


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,SQ8", "IVF8,PQ12x4"])
def test_removed_ids_never_come_back(factory: str) -> None:
    index, ids, vecs = filled(factory)
    gone = ids[:20].tolist()
    assert index.remove(gone) == 20
    assert index.remove(gone + [999_999]) == 0, "removing again or unknown ids is a no-op"
    assert index.ntotal == 280
    assert set(index.ids().tolist()) == set(ids[20:].tolist())
    for hits in index.search(vecs[:20], 10):
        assert len(hits) == 10 and not set(gone) & {i for i, _ in hits}
    # the survivors still map to the right vectors (IVF behind IDMap renumbers wrongly if
    # vectors are removed for real)
    for row in range(20, 40):
        assert int(ids[row]) in top_ids(index, vecs[row], 3)


def test_filtered_search_finds_rare_ids_in_hnsw() -> None:
    index, ids, vecs = filled("HNSW32", n=2000)
    allow = set(ids[::400].tolist())  # 5 of 2000
    hits = index.search(vecs[1], 5, allow=allow)[0]
    assert {i for i, _ in hits} == allow
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_block_excludes_ids() -> None:
    index, ids, vecs = filled("Flat")
    assert int(ids[0]) not in top_ids(index, vecs[0], 5, block={int(ids[0])})


def test_rejects_wrong_dimension_and_bad_factories() -> None:
    index, _, _ = filled("Flat", n=10)
    with pytest.raises(DimensionMismatch):
        index.search(np.zeros((1, DIM + 1), np.float32), 3)
    with pytest.raises(ValueError):
        index.search(np.full((1, DIM), np.nan, np.float32), 3)
    for factory in ["IDMap,Flat", "LSH", "Nonsense42", "IVF8,PQ5"]:
        with pytest.raises(ValueError):
            VectorIndex.create(DIM, factory)


def test_searches_overlap_but_not_with_a_write() -> None:
    lock = RWLock()
    inside = 0
    most = 0
    guard = threading.Lock()
    violations: list[str] = []

    def reader() -> None:
        nonlocal inside, most
        for _ in range(50):
            with lock.read():
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with guard:
                    inside -= 1

    def writer() -> None:
        for _ in range(20):
            with lock.write():
                if inside:
                    violations.append("writer ran beside a reader")
                time.sleep(0.0005)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert violations == [] and most > 1
