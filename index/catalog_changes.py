"""The catalog's change log: one ``changes`` row per insert and per delete of an item, written
in the same transaction as the item's row, numbered by a monotonically increasing ``seq``.

Every process that serves a data dir keeps its FAISS copy as a materialised view of this log:
it loads a snapshot that records the ``seq`` it holds, replays what came after, and follows new
rows (``index.follower``). SQLite commits one writer at a time, so a reader never sees a row
appear below a ``seq`` it has already read.

Retention: the rows are kept (about 40 bytes each, no item data); a delete's row is its
tombstone. A catalog written before the log existed gets one ``add`` row per stored item, with
``seq`` equal to the item's id, when it is first opened by this version.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "SCHEMA_VERSION",
    "TABLE",
    "Change",
    "Op",
    "create_and_fill",
    "exists",
    "last_seq",
    "record",
    "since",
]

TABLE = "changes"
# meta('schema_version'): 1 (implicit) before the change log, 2 with it.
SCHEMA_VERSION = 2

Op = Literal["add", "delete"]

_SCHEMA = f"""
CREATE TABLE {TABLE} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('add', 'delete')),
    at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Change:
    """One entry of the change log: item ``item_id`` was added or deleted at ``seq``."""

    seq: int
    item_id: int
    op: Op


def exists(conn: sqlite3.Connection) -> bool:
    """True when the catalog already has its change log."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    return row is not None


def create_and_fill(conn: sqlite3.Connection) -> int:
    """Create the log inside the caller's write transaction, with one ``add`` per stored item
    (``seq`` = the item's id, so a snapshot that held ids up to N held seq up to N); records
    the schema version; returns how many rows it wrote."""
    conn.execute(_SCHEMA)
    conn.execute(
        f"INSERT INTO {TABLE}(seq, item_id, op, at) SELECT id, id, 'add', created_at FROM items"
    )
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )
    return int(conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])


def record(conn: sqlite3.Connection, item_ids: list[int], op: Op, at: float) -> None:
    """Append one change per item, in order, inside the caller's write transaction."""
    conn.executemany(
        f"INSERT INTO {TABLE}(item_id, op, at) VALUES (?, ?, ?)",
        [(item_id, op, at) for item_id in item_ids],
    )


def last_seq(conn: sqlite3.Connection) -> int:
    """The highest ``seq`` written (0 for an empty log)."""
    return int(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {TABLE}").fetchone()[0])


def since(conn: sqlite3.Connection, seq: int, limit: int) -> list[Change]:
    """At most ``limit`` changes with a ``seq`` above ``seq``, in ``seq`` order."""
    rows = conn.execute(
        f"SELECT seq, item_id, op FROM {TABLE} WHERE seq > ? ORDER BY seq LIMIT ?",
        (seq, limit),
    ).fetchall()
    return [Change(int(s), int(i), op) for s, i, op in rows]
