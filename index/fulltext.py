"""The catalog's full-text index: SQLite FTS5 over the words a user gave each image.

One FTS5 row per item (rowid = items.id) holds its caption, tags and original file name; the
catalog writes it in the same transaction as the item's row, and creates and fills it when it
opens a catalog written before it existed. unicode61 splits "IMG_2041.jpg" into img / 2041 / jpg
and folds case and diacritics, so the query ``img_2041`` (a phrase of two tokens) finds it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence

from index.errors import BadQuery

__all__ = ["SYNTAXES", "expression", "search"]

TABLE = "items_fts"
SYNTAXES = ("terms", "fts5")
MAX_TERMS = 32
NEAR_GAP = 4
_SCHEMA = (
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5("
    "caption, tags, original_name, tokenize = 'unicode61 remove_diacritics 2')"
)
# BM25 column weights: a tag or a file name is a deliberate label, a caption a sentence.
_BM25 = f"bm25({TABLE}, 1.0, 2.0, 2.0)"


def exists(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    return row is not None


def create_and_fill(conn: sqlite3.Connection) -> int:
    """Create the table inside the caller's transaction, filled from the rows already stored;
    returns how many it holds."""
    conn.execute(_SCHEMA)
    conn.execute(
        f"INSERT INTO {TABLE}(rowid, caption, tags, original_name)"
        " SELECT id, caption, (SELECT group_concat(tag, ' ') FROM"
        " (SELECT tag FROM item_tags WHERE item_id = items.id ORDER BY tag)),"
        " original_name FROM items"
    )
    return int(conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])


def add_row(conn: sqlite3.Connection, item_id: int, caption: str | None, tags: Sequence[str],
            original_name: str | None) -> None:
    conn.execute(
        f"INSERT INTO {TABLE}(rowid, caption, tags, original_name) VALUES (?, ?, ?, ?)",
        (item_id, caption, " ".join(tags), original_name),
    )


def delete_row(conn: sqlite3.Connection, item_id: int) -> None:
    conn.execute(f"DELETE FROM {TABLE} WHERE rowid = ?", (item_id,))


def expression(query: str, syntax: str = "terms") -> str | None:
    """The FTS5 MATCH expression for a user's query (None: no word to look for).

    ``terms`` (the default) reads the query as plain words, each matched as a quoted phrase (so
    ``IMG_2041`` matches the file name ``IMG_2041.jpg``, and ``"``, ``AND``, ``*`` or ``NEAR(``
    are only text). A row matches when it holds every word (the first MAX_TERMS), either
    close together in its caption (at most NEAR_GAP other words between consecutive ones) or
    with at least one of them in its tags or file name: "Maria school" finds "drawn by Maria at
    the school" and a photo tagged maria captioned "school trip", while "a blue cross" does
    not find "a big red cross and a little blue circle" (measured in docs/search-quality.md:
    scattered words in descriptive captions were what made keyword hits wrong). BM25 ranks
    the matches. ``fts5`` passes the query to FTS5 as written (AND/OR/NOT, prefix*,
    "phrases", NEAR, column filters such as ``tags: beach``).

    Raises BadQuery for an unknown syntax or an FTS5 expression that does not parse.
    """
    if syntax == "terms":
        words = query.replace("\x00", " ").split()[:MAX_TERMS]
        if not words:
            return None
        phrases = ['"' + w.replace('"', '""') + '"' for w in words]
        if len(phrases) == 1:
            return phrases[0]
        every = " AND ".join(phrases)
        return f"NEAR({' '.join(phrases)}, {NEAR_GAP}) OR (({every}) NOT caption : ({every}))"
    if syntax == "fts5":
        if not query.strip():
            return None
        _check(query)
        return query
    raise BadQuery(f"unknown keyword syntax {syntax!r}; expected one of {list(SYNTAXES)}")


def _check(expr: str) -> None:
    """Parse an FTS5 expression against an empty in-memory table of the same columns: a
    syntax error is a property of the query, reported before the catalog is read."""
    with contextlib.closing(sqlite3.connect(":memory:")) as probe:
        probe.execute(_SCHEMA)
        try:
            probe.execute(f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ?", (expr,)).fetchall()
        except sqlite3.OperationalError as exc:
            raise BadQuery(
                f"the keyword query is not valid FTS5 syntax ({exc}); put literal text in "
                'double quotes, or send keyword_syntax "terms" to search for the words as '
                "written"
            ) from exc


def search(conn: sqlite3.Connection, expr: str, limit: int,
           tags: Sequence[str] = ()) -> list[tuple[int, float]]:
    """(id, BM25 relevance, higher is better) of the rows matching ``expr``, best first, at
    most ``limit``, only rows carrying every one of ``tags``. Raises ValueError for limit < 0."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    where, args = "", []
    wanted = sorted(set(tags))
    if wanted:
        marks = ",".join("?" * len(wanted))
        where = (f" AND rowid IN (SELECT item_id FROM item_tags WHERE tag IN ({marks})"
                 " GROUP BY item_id HAVING COUNT(*) = ?)")
        args = [*wanted, len(wanted)]
    rows = conn.execute(
        f"SELECT rowid, -{_BM25} AS relevance FROM {TABLE} WHERE {TABLE} MATCH ?{where}"
        " ORDER BY relevance DESC, rowid LIMIT ?",
        (expr, *args, limit),
    ).fetchall()
    return [(int(r[0]), float(r[1])) for r in rows]
