"""The SQLite catalog on a real file: transactions, queries, concurrency, model checks."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index.catalog import Catalog, NewItem
from index.errors import (
    DimensionMismatch,
    ItemNotFound,
    ModelMismatch,
    StoreError,
    TokensUnavailable,
)

DIM = 8


def row(i: int, tags: tuple[str, ...] = (), tokens: bool = True) -> NewItem:
    rng = np.random.default_rng(i)
    return NewItem(
        sha256=f"{i:064x}",
        file=f"00/00/{i:064x}.png",
        content_type="image/png",
        embedding=rng.standard_normal(DIM).astype(np.float32),
        tokens=rng.standard_normal((3, 5)).astype(np.float16) if tokens else None,
        original_name=f"{i}.png",
        caption=f"c{i}",
        tags=tags,
        bytes=100 + i,
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(tmp_path / "catalog.sqlite3")
    cat.check_model("m", DIM)
    yield cat
    cat.close()


def test_pragmas(catalog: Catalog, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = catalog._connect()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn.close()


def test_add_get_and_lookups(catalog: Catalog) -> None:
    item = catalog.add(row(1, tags=("b", "a")))
    assert item.id >= 1 and item.tags == ["a", "b"] and item.bytes == 101
    assert catalog.get(item.id) == item
    assert catalog.get_by_sha(f"{1:064x}") == item
    assert catalog.get_by_sha("f" * 64) is None
    assert catalog.file_referenced(item.file)
    assert catalog.all_files() == {item.file}
    assert catalog.count() == 1 and catalog.max_id() == item.id
    with pytest.raises(ItemNotFound):
        catalog.get(item.id + 1)


def test_add_many_is_one_transaction(catalog: Catalog) -> None:
    catalog.add(row(1))
    with pytest.raises(sqlite3.IntegrityError):
        catalog.add_many([row(2), row(3), row(1)])  # the last repeats a sha256
    assert catalog.count() == 1
    items = catalog.add_many([row(2), row(3)])
    assert [i.id for i in items] == sorted(i.id for i in items)
    assert catalog.count() == 3


def test_list_pagination_and_tag_filter(catalog: Catalog) -> None:
    ids = [catalog.add(row(i, tags=("odd",) if i % 2 else ("even",))).id for i in range(25)]
    page, total = catalog.list(0, 10)
    assert total == 25 and [i.id for i in page] == ids[::-1][:10]
    page, total = catalog.list(20, 10)
    assert total == 25 and [i.id for i in page] == ids[::-1][20:]
    page, total = catalog.list(0, 0)
    assert page == [] and total == 25
    page, total = catalog.list(0, 100, tag="odd")
    assert total == 12 and all("odd" in i.tags for i in page)
    assert [i.id for i in page] == sorted((i.id for i in page), reverse=True)
    assert catalog.list(0, 10, tag="missing") == ([], 0)
    with pytest.raises(ValueError):
        catalog.list(-1, 10)


def test_ids_with_tags_needs_every_tag(catalog: Catalog) -> None:
    both = catalog.add(row(1, tags=("cat", "outdoor"))).id
    cat_only = catalog.add(row(2, tags=("cat",))).id
    catalog.add(row(3))
    assert catalog.ids_with_tags(["cat", "outdoor"]) == {both}
    assert catalog.ids_with_tags(["cat"]) == {both, cat_only}
    assert catalog.ids_with_tags(["cat", "cat"]) == {both, cat_only}
    assert catalog.ids_with_tags(["dog"]) == set()


def test_tag_ids_stay_true_across_writes(catalog: Catalog) -> None:
    """The ids of a tag filter are kept between writes; every add or delete makes the next
    answer come from the catalog again, including ones read while a write commits."""
    first = catalog.add(row(1, tags=("cat",))).id
    assert catalog.ids_with_tags(["cat"]) == {first}
    assert catalog.ids_with_tags(["cat"]) == {first}  # now from the kept answer
    second = catalog.add(row(2, tags=("cat", "dog"))).id
    assert catalog.ids_with_tags(["cat"]) == {first, second}
    assert catalog.ids_with_tags(["dog", "cat"]) == {second}
    catalog.delete(first)
    assert catalog.ids_with_tags(["cat"]) == {second}
    with pytest.raises(sqlite3.IntegrityError):  # a failed write (same sha256) changes nothing
        catalog.add(row(2, tags=("cat",)))
    assert catalog.ids_with_tags(["cat"]) == {second}

    # a reader filling the kept answers while writes commit must not leave a stale one behind
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            catalog.ids_with_tags(["cat"])

    t = threading.Thread(target=reader)
    t.start()
    try:
        added = [catalog.add(row(100 + i, tags=("cat",))).id for i in range(40)]
    finally:
        stop.set()
        t.join()
    assert catalog.ids_with_tags(["cat"]) == {second, *added}


def test_delete_cascades_tags(catalog: Catalog) -> None:
    item = catalog.add(row(1, tags=("x",)))
    assert catalog.delete(item.id) == item
    assert catalog.ids_with_tags(["x"]) == set()
    assert not catalog.file_referenced(item.file)
    with pytest.raises(ItemNotFound):
        catalog.delete(item.id)
    with pytest.raises(ItemNotFound):
        catalog.get(item.id)


def test_ids_are_never_reused(catalog: Catalog) -> None:
    first = catalog.add(row(1)).id
    catalog.delete(first)
    assert catalog.add(row(2)).id > first


def test_get_many_skips_missing(catalog: Catalog) -> None:
    a, b = catalog.add(row(1)).id, catalog.add(row(2)).id
    assert set(catalog.get_many([a, b, 999, a])) == {a, b}


def test_embeddings_in_batches(catalog: Catalog) -> None:
    items = catalog.add_many([row(i) for i in range(7)])
    batches = list(catalog.embeddings(batch=3))
    assert [len(ids) for ids, _ in batches] == [3, 3, 1]
    ids = np.concatenate([ids for ids, _ in batches])
    vecs = np.concatenate([v for _, v in batches])
    assert ids.dtype == np.int64 and vecs.dtype == np.float32 and vecs.shape == (7, DIM)
    assert ids.tolist() == [i.id for i in items]
    np.testing.assert_array_equal(vecs[2], row(2).embedding)
    after = list(catalog.embeddings(after_id=items[4].id))
    assert np.concatenate([i for i, _ in after]).tolist() == [items[5].id, items[6].id]
    found, vectors = catalog.embeddings_for([items[3].id, 12345, items[1].id])
    assert found.tolist() == [items[1].id, items[3].id]
    np.testing.assert_array_equal(vectors[1], row(3).embedding)


def test_tokens_in_requested_order(catalog: Catalog) -> None:
    a, b = catalog.add(row(1)).id, catalog.add(row(2)).id
    tokens = catalog.tokens([b, a, b])
    assert tokens.dtype == np.float16 and tokens.shape == (3, 3, 5)
    np.testing.assert_array_equal(tokens[0], row(2).tokens)
    np.testing.assert_array_equal(tokens[1], row(1).tokens)
    with pytest.raises(ItemNotFound):
        catalog.tokens([a, 999])
    bare = catalog.add(row(3, tokens=False)).id
    with pytest.raises(TokensUnavailable):
        catalog.tokens([a, bare])
    assert catalog.tokens([]).shape[0] == 0


def test_check_model(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite3")
    cat.check_model("m", DIM)
    cat.check_model("other", 4)  # empty: a new model may take over
    cat.check_model("m", DIM)
    cat.add(row(1))
    with pytest.raises(DimensionMismatch) as info:
        cat.check_model("m", 16)
    assert "re-embed" in str(info.value) and "new" in str(info.value)
    with pytest.raises(ModelMismatch):
        cat.check_model("other", DIM)
    cat.check_model("m", DIM)
    cat.close()


def test_reads_are_not_blocked_by_a_writer(catalog: Catalog, tmp_path: Path) -> None:
    catalog.add(row(1))
    writer = sqlite3.connect(tmp_path / "catalog.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE items SET caption = 'changing'")
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(catalog.get(1).caption))
    reader.start()
    reader.join(timeout=5)
    assert result == ["c1"], "WAL readers see the last commit while a write is open"
    writer.execute("ROLLBACK")
    writer.close()


def test_concurrent_readers_and_writer(catalog: Catalog) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                page, total = catalog.list(0, 5)
                assert len(page) == min(5, total)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for i in range(40):
        catalog.add(row(i))
    stop.set()
    for t in readers:
        t.join()
    assert errors == [] and catalog.count() == 40


def test_integrity_check_and_backup(catalog: Catalog, tmp_path: Path) -> None:
    catalog.add(row(1, tags=("t",)))
    assert catalog.integrity_check() == "ok"
    catalog.backup(tmp_path / "copy.sqlite3")
    copy = Catalog(tmp_path / "copy.sqlite3")
    assert copy.count() == 1 and copy.get(1).tags == ["t"]
    copy.close()


def test_closed_catalog_refuses(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite3")
    cat.close()
    cat.close()
    with pytest.raises(StoreError):
        cat.count()


def test_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "c.sqlite3"
    bad.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StoreError):
        Catalog(bad)
