"""The catalog's change log on a real SQLite file: every insert and delete is logged in its own
transaction, in order; a catalog written before the log existed gains one and keeps its rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index.catalog import Catalog, Change, NewItem

DIM = 8


def row(i: int) -> NewItem:
    return NewItem(
        sha256=f"{i:064x}",
        file=f"00/00/{i:064x}.png",
        content_type="image/png",
        embedding=np.random.default_rng(i).standard_normal(DIM).astype(np.float32),
        caption=f"c{i}",
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(tmp_path / "catalog.sqlite3")
    cat.check_model("m", DIM)
    yield cat
    cat.close()


def test_inserts_and_deletes_are_logged_in_order(catalog: Catalog) -> None:
    assert catalog.last_seq() == 0
    assert catalog.changes_since(0) == []
    a, b = catalog.add_many([row(1), row(2)])
    c = catalog.add(row(3))
    catalog.delete(b.id)
    log = catalog.changes_since(0)
    assert [(ch.item_id, ch.op) for ch in log] == [
        (a.id, "add"), (b.id, "add"), (c.id, "add"), (b.id, "delete")
    ]
    seqs = [ch.seq for ch in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert catalog.last_seq() == seqs[-1]
    assert catalog.changes_since(seqs[1]) == log[2:]
    assert catalog.changes_since(seqs[0], limit=2) == log[1:3]
    assert catalog.changes_since(seqs[-1]) == []
    assert isinstance(log[0], Change)


def test_a_failed_write_logs_nothing(catalog: Catalog) -> None:
    catalog.add(row(1))
    before = catalog.last_seq()
    with pytest.raises(sqlite3.IntegrityError):
        catalog.add_many([row(2), row(1)])  # the second repeats a stored sha256
    with pytest.raises(Exception, match="5"):
        catalog.delete(5)
    assert catalog.last_seq() == before
    assert [ch.op for ch in catalog.changes_since(0)] == ["add"]


def test_bad_arguments_are_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError):
        catalog.changes_since(-1)
    with pytest.raises(ValueError):
        catalog.changes_since(0, limit=0)


def test_a_catalog_from_before_the_log_gains_one_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    old = Catalog(path)
    old.check_model("m", DIM)
    items = old.add_many([row(i) for i in range(1, 6)])
    old.delete(items[1].id)
    old.close()
    # What the previous version left: the same tables, no change log, no schema version.
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE changes")
        conn.execute("DELETE FROM meta WHERE key = 'schema_version'")
    cat = Catalog(path)
    try:
        kept = [i.id for i in items if i.id != items[1].id]
        assert sorted(cat.ids().tolist()) == kept
        assert [(ch.seq, ch.item_id, ch.op) for ch in cat.changes_since(0)] == [
            (i, i, "add") for i in kept
        ]
        assert cat.last_seq() == kept[-1]
        new = cat.add(row(9))
        assert new.id == items[-1].id + 1
        assert cat.changes_since(kept[-1]) == [Change(kept[-1] + 1, new.id, "add")]
        version = sqlite3.connect(path).execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        assert version == ("2",)
    finally:
        cat.close()
    again = Catalog(path)  # a second open migrates nothing twice
    try:
        assert len(again.changes_since(0)) == len(kept) + 1
    finally:
        again.close()
