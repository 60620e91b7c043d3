"""A PostgreSQL catalog written out as a SQLite catalog file: the backup of a shared catalog is a
data dir's own catalog, which ``fusion-search serve`` opens without any database server."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import psycopg

from index.catalog import Catalog
from index.catalog_schema import SCHEMA
from index.errors import StoreError

__all__ = ["export_sqlite"]

_BATCH = 1_000


def export_sqlite(conn: psycopg.Connection, dest: Path) -> None:
    """Copy every row, tag and the model record read in ``conn``'s transaction (one snapshot)
    into a new SQLite catalog at ``dest``, ids kept; the SQLite catalog then builds its full-text
    index and change log from those rows when it first opens the file (done here, once).

    Raises StoreError when ``dest`` exists or cannot be written.
    """
    if dest.exists():
        raise StoreError(f"backup target {dest} exists")
    try:
        with contextlib.closing(sqlite3.connect(dest, isolation_level=None)) as out:
            out.executescript(SCHEMA)
            out.execute("BEGIN")
            out.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                            conn.execute("SELECT key, value FROM meta").fetchall())
            out.executemany("INSERT INTO item_tags(item_id, tag) VALUES (?, ?)",
                            conn.execute("SELECT item_id, tag FROM item_tags").fetchall())
            rows = conn.cursor(name="backup")  # server-side: the rows stream in batches
            rows.execute(
                "SELECT id, sha256, file, original_name, content_type, width, height, caption,"
                " created_at, bytes, embedding, tokens, tokens_shape FROM items ORDER BY id"
            )
            while batch := rows.fetchmany(_BATCH):
                out.executemany(
                    "INSERT INTO items(id, sha256, file, original_name, content_type, width,"
                    " height, caption, created_at, bytes, embedding, tokens, tokens_shape)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    batch,
                )
            rows.close()
            out.execute("COMMIT")
        Catalog(dest).close()  # full text and change log, from the rows
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"backup to {dest} failed: {exc}") from exc
