"""The catalog's full-text index: written with the row, searched by BM25, safe on odd input,
and built for catalogs written before it existed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from index import BadQuery, Item, Store, Upload
from index.store import CATALOG_NAME

Add = Callable[[Store, Upload], tuple[Item, bool]]


def _named(make_upload: Callable[..., Upload], i: int, *, name: str | None = None,
           caption: str | None = None, tags: tuple[str, ...] = ()) -> Upload:
    base = make_upload(i, tags=tags)
    return replace(base, original_name=name, caption=caption)


@pytest.fixture
def filled(open_store: Callable[..., Store], make_upload: Callable[..., Upload],
           add_one: Add) -> tuple[Store, dict[str, int]]:
    store = open_store()
    ids = {}
    rows = {
        "img": dict(name="IMG_2041.jpg", caption="a red circle"),
        "maria": dict(name="scan-7.png", caption="drawn by Maria at school"),
        "beach": dict(name="x.png", caption=None, tags=("holiday2019", "beach")),
        "emile": dict(name="Émile.png", caption="Émile's green star"),
        "plain": dict(name=None, caption="a blue square"),
    }
    for i, (key, kw) in enumerate(rows.items()):
        ids[key] = add_one(store, _named(make_upload, i, **kw))[0].id  # type: ignore[arg-type]
    return store, ids


def test_file_name_caption_word_and_tag_each_find_their_item(
        filled: tuple[Store, dict[str, int]]) -> None:
    store, ids = filled
    assert [i for i, _ in store.keyword_search("IMG_2041", 10)] == [ids["img"]]
    assert [i for i, _ in store.keyword_search("img_2041", 10)] == [ids["img"]]
    assert [i for i, _ in store.keyword_search("maria", 10)] == [ids["maria"]]
    assert [i for i, _ in store.keyword_search("holiday2019", 10)] == [ids["beach"]]
    # case and diacritics folded both ways
    assert [i for i, _ in store.keyword_search("emile", 10)] == [ids["emile"]]
    assert [i for i, _ in store.keyword_search("ÉMILE", 10)] == [ids["emile"]]


def test_every_word_must_match_near_in_the_caption_or_in_a_label(
        open_store: Callable[..., Store], make_upload: Callable[..., Upload],
        add_one: Add) -> None:
    store = open_store()
    rows = [
        dict(caption="drawn by Maria at the school", name="a.png"),
        dict(caption="school trip", tags=("maria",), name="b.png"),
        dict(caption="Maria went to the lake, and then, much later, to school", name="c.png"),
        dict(caption="there is a big red cross and a little blue circle", name="d.png"),
        dict(caption="a blue cross", name="e.png"),
        dict(caption="a red circle", name="IMG_2041.jpg"),
    ]
    ids = [add_one(store, _named(make_upload, i, **kw))[0].id  # type: ignore[arg-type]
           for i, kw in enumerate(rows)]

    def found(query: str) -> list[int]:
        return sorted(i for i, _ in store.keyword_search(query, 10))

    assert found("maria school") == [ids[0], ids[1]]  # near in a caption, or one in a tag
    assert found("there is a blue cross") == []  # scattered over a caption
    # within 4 words of each other in d ("cross and a little blue"); BM25 puts e first
    assert found("a blue cross") == [ids[3], ids[4]]
    assert store.keyword_search("a blue cross", 10)[0][0] == ids[4]
    assert found("img_2041 red") == [ids[5]]  # one word in the file name, one in the caption
    assert found("maria circle") == []


def test_bm25_ranks_and_tags_filter(filled: tuple[Store, dict[str, int]]) -> None:
    store, ids = filled
    hits = store.keyword_search("a", 10)
    assert {i for i, _ in hits} == {ids["img"], ids["plain"]}
    assert all(score > 0 for _, score in hits)
    assert [i for i, _ in store.keyword_search("a", 10, tags=["beach"])] == []
    assert [i for i, _ in store.keyword_search("x", 10, tags=["beach", "holiday2019"])] == [
        ids["beach"]]
    assert len(store.keyword_search("a", 1)) == 1


@pytest.mark.parametrize("query", ['"', "AND", "*", "NEAR(", 'a"b', "OR OR", "foo:bar", "-",
                                   "^", "(", ")", "NOT", "\u2603", "名前", "'; DROP TABLE items;--",
                                   "  \t "])
def test_terms_syntax_takes_any_text(filled: tuple[Store, dict[str, int]], query: str) -> None:
    store, _ = filled
    assert store.keyword_search(query, 10) == []
    assert store.stats()["count"] == 5


def test_terms_syntax_matches_operator_words_as_text(
        open_store: Callable[..., Store], make_upload: Callable[..., Upload], add_one: Add) -> None:
    store = open_store()
    item, _ = add_one(store, _named(make_upload, 1, caption="Tom AND Jerry near the NEAR sign"))
    assert [i for i, _ in store.keyword_search("AND", 5)] == [item.id]
    assert [i for i, _ in store.keyword_search('NEAR( "jerry', 5)] == [item.id]


@pytest.mark.parametrize("query", ['"', "AND", "*", "NEAR(", 'a"b', "foo:bar", "OR OR"])
def test_fts5_syntax_errors_are_bad_queries(filled: tuple[Store, dict[str, int]],
                                            query: str) -> None:
    store, _ = filled
    with pytest.raises(BadQuery, match="not valid FTS5 syntax"):
        store.keyword_search(query, 10, syntax="fts5")


def test_fts5_syntax_operators_work(filled: tuple[Store, dict[str, int]]) -> None:
    store, ids = filled
    assert [i for i, _ in store.keyword_search("tags: beach", 10, syntax="fts5")] == [ids["beach"]]
    assert [i for i, _ in store.keyword_search("mar*", 10, syntax="fts5")] == [ids["maria"]]
    assert store.keyword_search("maria AND circle", 10, syntax="fts5") == []
    with pytest.raises(BadQuery, match="unknown keyword syntax"):
        store.keyword_search("x", 10, syntax="sql")


def test_delete_removes_the_text_row(filled: tuple[Store, dict[str, int]]) -> None:
    store, ids = filled
    store.delete(ids["maria"])
    assert store.keyword_search("maria", 10) == []


def test_a_catalog_without_the_index_gets_it_filled_on_open(
        tmp_path: Path, open_store: Callable[..., Store], make_upload: Callable[..., Upload],
        add_one: Add) -> None:
    data_dir = tmp_path / "old"
    store = open_store(data_dir)
    for i, name in enumerate(["IMG_0001.jpg", "IMG_0002.jpg"]):
        add_one(store, _named(make_upload, i, name=name, caption=f"by Oskar {i}", tags=("t",)))
    store.close()
    # the schema of a catalog written before the full-text index existed
    with sqlite3.connect(data_dir / CATALOG_NAME) as conn:
        conn.execute("DROP TABLE items_fts")
    reopened = open_store(data_dir)
    assert [i for i, _ in reopened.keyword_search("IMG_0002", 10)] == [2]
    assert sorted(i for i, _ in reopened.keyword_search("oskar", 10)) == [1, 2]
    assert sorted(i for i, _ in reopened.keyword_search("t", 10)) == [1, 2]
