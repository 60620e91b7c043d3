"""The same catalog contract, run against both backends: SQLite (a file) and PostgreSQL (a
throwaway server from tests/pg_support.py, one new database per test).

What a caller relies on whichever backend holds the catalog: rows, tags, vectors and tokens come
back as stored; one sha256 makes one item even when two writers race; deletes are logged; the
change log is read in order by a follower that never misses a row; keyword search finds what
the SQLite catalog finds.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pg_support import PgCluster, require_cluster

from index.catalog_changes import Change
from index.catalog_factory import CatalogBackend, open_catalog
from index.catalog_schema import NewItem
from index.errors import BadQuery, DimensionMismatch, DuplicateContent, ItemNotFound

DIM = 8
Opener = Callable[[], CatalogBackend]


def row(i: int, *, caption: str | None = None, tags: tuple[str, ...] = (),
        name: str | None = None) -> NewItem:
    rng = np.random.default_rng(i)
    return NewItem(
        sha256=f"{i:064x}",
        file=f"00/00/{i:064x}.png",
        content_type="image/png",
        embedding=rng.standard_normal(DIM).astype(np.float32),
        tokens=rng.standard_normal((3, 4)).astype(np.float16),
        caption=caption,
        tags=tags,
        original_name=name,
        width=8,
        height=6,
        bytes=100 + i,
    )


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = require_cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens catalogs on one fresh store (each call: a new connection pool / file handle)."""
    if request.param == "postgres":
        target: str | Path = request.getfixturevalue("pg_cluster").create_database()
    else:
        target = tmp_path / "catalog.sqlite3"
    opened: list[CatalogBackend] = []

    def open_one() -> CatalogBackend:
        cat = open_catalog(target)
        opened.append(cat)
        return cat

    yield open_one
    for cat in opened:
        cat.close()


@pytest.fixture
def catalog(opener: Opener) -> CatalogBackend:
    cat = opener()
    cat.check_model("m", DIM)
    return cat


def test_rows_vectors_and_tokens_come_back_as_stored(catalog: CatalogBackend) -> None:
    news = [row(1, caption="one", tags=("b", "a", "a")), row(2, name="two.png"), row(3)]
    items = catalog.add_many(news)
    assert [i.id for i in items] == sorted(i.id for i in items)
    first = catalog.get(items[0].id)
    assert first == items[0]
    assert first.tags == ["a", "b"] and first.caption == "one" and first.bytes == 101
    assert catalog.get_by_sha(news[1].sha256) == items[1]
    assert catalog.get_by_sha("f" * 64) is None
    assert catalog.get_many([items[2].id, items[0].id, 999_999]) == {
        items[2].id: items[2], items[0].id: items[0]}
    assert catalog.count() == 3 and catalog.max_id() == items[2].id
    assert catalog.ids().tolist() == [i.id for i in items]
    ids, vecs = catalog.embeddings_for([items[2].id, items[0].id])
    assert ids.tolist() == [items[0].id, items[2].id]
    np.testing.assert_array_equal(vecs, np.stack([news[0].embedding, news[2].embedding]))
    batches = list(catalog.embeddings(after_id=items[0].id, batch=1))
    assert [b[0].tolist() for b in batches] == [[items[1].id], [items[2].id]]
    toks = catalog.tokens([items[2].id, items[0].id])
    np.testing.assert_array_equal(toks, np.stack([news[2].tokens, news[0].tokens]))
    with pytest.raises(ItemNotFound):
        catalog.tokens([999_999])
    assert catalog.file_referenced(news[0].file) and not catalog.file_referenced("nope")
    assert catalog.all_files() == {n.file for n in news}
    page, total = catalog.list(offset=1, limit=1)
    assert total == 3 and [i.id for i in page] == [items[1].id]  # newest first
    assert catalog.integrity_check() == "ok"


def test_a_repeated_sha_is_refused_and_the_batch_leaves_nothing(catalog: CatalogBackend) -> None:
    kept = catalog.add(row(1))
    seq = catalog.last_seq()
    with pytest.raises(sqlite3.IntegrityError):  # both backends: DuplicateContent on PostgreSQL
        catalog.add_many([row(2), row(1)])
    assert catalog.count() == 1 and catalog.get_by_sha(row(2).sha256) is None
    assert catalog.last_seq() == seq
    assert catalog.ids().tolist() == [kept.id]


def test_two_writers_racing_on_one_sha_make_one_item(opener: Opener) -> None:
    a, b = opener(), opener()
    a.check_model("m", DIM)

    def write(cat: CatalogBackend, i: int, barrier: threading.Barrier,
              outcomes: list[str]) -> None:
        barrier.wait()
        try:
            cat.add(row(100 + i))
            outcomes.append("stored")
        except sqlite3.IntegrityError as exc:
            outcomes.append("duplicate" if isinstance(exc, DuplicateContent) or
                            "UNIQUE" in str(exc) else repr(exc))

    for attempt in range(5):
        barrier = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [threading.Thread(target=write, args=(c, attempt, barrier, outcomes))
                   for c in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(outcomes) == ["duplicate", "stored"], outcomes
    assert a.count() == b.count() == 5
    assert [c.op for c in b.changes_since(0)] == ["add"] * 5


def test_delete_removes_the_row_and_its_tags_and_is_logged(catalog: CatalogBackend) -> None:
    one, two = catalog.add_many([row(1, tags=("x",)), row(2, tags=("x", "y"))])
    gone = catalog.delete(one.id)
    assert gone == one
    with pytest.raises(ItemNotFound):
        catalog.get(one.id)
    with pytest.raises(ItemNotFound):
        catalog.delete(one.id)
    assert catalog.ids_with_tags(["x"]) == {two.id}
    assert catalog.list(tag="x") == ([two], 1)
    assert [(c.item_id, c.op) for c in catalog.changes_since(0)] == [
        (one.id, "add"), (two.id, "add"), (one.id, "delete")]
    again = catalog.add(row(1))  # the same bytes may come back, as a new item
    assert again.id > two.id


def test_tags_filter_listing_and_id_sets(catalog: CatalogBackend) -> None:
    a, b, c = catalog.add_many([row(1, tags=("cat", "red")), row(2, tags=("cat",)), row(3)])
    assert catalog.ids_with_tags(["cat"]) == {a.id, b.id}
    assert catalog.ids_with_tags(["cat", "red"]) == {a.id}
    assert catalog.ids_with_tags([]) == {a.id, b.id, c.id}
    items, total = catalog.list(tag="cat")
    assert total == 2 and [i.id for i in items] == [b.id, a.id]
    d = catalog.add(row(4, tags=("red", "cat")))  # a write refreshes a cached tag set
    assert catalog.ids_with_tags(["cat", "red"]) == {a.id, d.id}


def test_a_follower_reading_the_log_under_concurrent_writers_misses_nothing(
        opener: Opener) -> None:
    writers = [opener(), opener()]
    writers[0].check_model("m", DIM)
    reader = opener()
    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def follow() -> None:
        last = 0
        while True:
            done = stop.is_set()
            for change in reader.changes_since(last):
                if change.seq <= last:
                    errors.append(f"seq {change.seq} after {last}")
                last = change.seq
                seen.append(change.seq)
            if done:
                return

    def write(w: int) -> None:
        cat = writers[w % 2]
        for k in range(15):
            item = cat.add(row(1000 * (w + 1) + k))
            if k % 5 == 4:
                cat.delete(item.id)

    follower = threading.Thread(target=follow)
    follower.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    follower.join(30)
    full = [c.seq for c in reader.changes_since(0)]
    assert not errors
    assert len(full) == 4 * 18 and full == sorted(set(full))
    assert seen == full  # every change, each once, in order
    assert reader.last_seq() == full[-1]


def test_keyword_search_finds_what_the_sqlite_catalog_finds(catalog: CatalogBackend) -> None:
    rows = [
        row(0, caption="drawn by Maria at the school", name="a.png"),
        row(1, caption="school trip", tags=("maria",), name="b.png"),
        row(2, caption="Maria went to the lake, and then, much later, to school", name="c.png"),
        row(3, caption="there is a big red cross and a little blue circle", name="d.png"),
        row(4, caption="a blue cross", name="e.png"),
        row(5, caption="a red circle", name="IMG_2041.jpg"),
        row(6, caption="Émile's green star", name="Émile.png", tags=("holiday2019", "beach")),
        row(7, caption="Tom AND Jerry near the NEAR sign"),
    ]
    ids = [i.id for i in catalog.add_many(rows)]

    def found(query: str, **kw: object) -> list[int]:
        return sorted(i for i, _ in catalog.keyword_search(query, 10, **kw))  # type: ignore[arg-type]

    assert found("maria school") == [ids[0], ids[1]]  # near in a caption, or one in a tag
    assert found("there is a blue cross") == []  # scattered over a caption
    assert found("a blue cross") == [ids[3], ids[4]]  # within 4 words of each other in d
    assert catalog.keyword_search("a blue cross", 10)[0][0] == ids[4]
    assert found("img_2041 red") == [ids[5]]  # one word in the file name, one in the caption
    assert found("IMG_2041") == [ids[5]]
    assert found("maria circle") == []
    assert found("emile") == found("ÉMILE") == [ids[6]]  # case and diacritics folded
    assert found("holiday2019") == [ids[6]]
    assert found("green", tags=["beach"]) == [ids[6]]
    assert found("school", tags=["beach"]) == []
    assert found("AND jerry") == [ids[7]] and found('NEAR( "jerry') == [ids[7]]
    for odd in ['"', "*", "'; DROP TABLE items;--", "  \t ", "名前", "\u2603"]:
        assert found(odd) == []
    assert len(catalog.keyword_search("a", 1)) == 1
    assert all(score > 0 for _, score in catalog.keyword_search("circle", 10))
    assert catalog.count() == len(rows)
    with pytest.raises(BadQuery):
        catalog.keyword_search("x", 5, syntax="regex")


def test_another_models_vectors_are_refused(catalog: CatalogBackend) -> None:
    catalog.add(row(1))
    with pytest.raises(DimensionMismatch):
        catalog.check_model("m", DIM + 1)
    catalog.check_model("m", DIM)  # the same model is welcome


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    return pg_cluster.create_database()


def test_postgres_notifies_a_waiting_reader_of_another_writer(pg_url: str) -> None:
    from index.catalog_pg import PgCatalog

    writer, reader = PgCatalog(pg_url), PgCatalog(pg_url)
    try:
        writer.check_model("m", DIM)
        assert reader.wait_for_change(0.3) is False  # nothing written: it times out
        woke: list[bool] = []
        waiting = threading.Thread(target=lambda: woke.append(reader.wait_for_change(30)))
        waiting.start()
        time.sleep(0.5)  # the reader is listening by now
        started = time.monotonic()
        item = writer.add(row(1))
        waiting.join(30)
        assert woke == [True] and time.monotonic() - started < 10
        assert reader.changes_since(0) == [Change(reader.last_seq(), item.id, "add")]
    finally:
        writer.close()
        reader.close()


def test_a_postgres_backup_is_a_sqlite_catalog_with_the_same_items(
        pg_url: str, tmp_path: Path) -> None:
    from index.catalog import Catalog
    from index.catalog_pg import PgCatalog

    source = PgCatalog(pg_url)
    try:
        source.check_model("m", DIM)
        items = source.add_many([row(1, caption="a red circle", tags=("x",)), row(2), row(3)])
        source.delete(items[1].id)
        source.backup(tmp_path / "catalog.sqlite3")
    finally:
        source.close()
    copy = Catalog(tmp_path / "catalog.sqlite3")
    try:
        assert copy.list(limit=10) == ([items[2], items[0]], 2)
        assert [i for i, _ in copy.keyword_search("red circle", 5)] == [items[0].id]
        np.testing.assert_array_equal(copy.tokens([items[0].id])[0], row(1).tokens)
        assert copy.integrity_check() == "ok"
        copy.check_model("m", DIM)  # the model record came along
        with pytest.raises(DimensionMismatch):
            copy.check_model("m", DIM + 1)
    finally:
        copy.close()
