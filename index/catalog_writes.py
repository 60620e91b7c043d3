"""The catalog's writes, each inside the caller's write transaction: recording the model,
inserting rows with their tags and full-text entries, deleting a row."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np

from index import catalog_changes, fulltext
from index.catalog_schema import ITEM_COLUMNS, Item, NewItem, item_from_row
from index.errors import DimensionMismatch, ItemNotFound, ModelMismatch

__all__ = ["delete_item", "insert_items", "record_model"]


def record_model(conn: sqlite3.Connection, name: str, dim: int) -> None:
    """Record the model on first use; afterwards refuse another model's dimension or name.

    An empty catalog adopts the new model. Raises DimensionMismatch when the stored
    dimension differs, ModelMismatch when only the model name differs.
    """
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM items)").fetchone()[0]
    stored_name, stored_dim = meta.get("model_name"), meta.get("embed_dim")
    if stored_dim is not None and not empty:
        if int(stored_dim) != dim:
            raise DimensionMismatch(int(stored_dim), dim)
        if stored_name != name:
            raise ModelMismatch(
                f"the data dir holds embeddings of model {stored_name!r}, but the "
                f"service loaded {name!r}; vectors of two models cannot be compared. "
                "Use the original model, or a new data dir for this one",
                stored=str(stored_name),
                current=name,
            )
    if (stored_name, stored_dim) != (name, str(dim)):
        conn.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            [("model_name", name), ("embed_dim", str(dim))],
        )


def insert_items(conn: sqlite3.Connection, news: Sequence[NewItem], created: float) -> list[Item]:
    """Insert rows, their tags, full-text entries and ``add`` changes, created at ``created``
    (epoch seconds); returns the stored items.

    Raises sqlite3.IntegrityError for a sha256 already stored.
    """
    items: list[Item] = []
    for new in news:
        tokens, shape = None, None
        if new.tokens is not None:
            tok = np.ascontiguousarray(new.tokens, dtype="<f2")
            tokens, shape = tok.tobytes(), ",".join(str(s) for s in tok.shape)
        cur = conn.execute(
            "INSERT INTO items(sha256, file, original_name, content_type, width, height,"
            " caption, created_at, bytes, embedding, tokens, tokens_shape)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new.sha256,
                new.file,
                new.original_name,
                new.content_type,
                new.width,
                new.height,
                new.caption,
                created,
                new.bytes,
                np.ascontiguousarray(new.embedding, dtype="<f4").tobytes(),
                tokens,
                shape,
            ),
        )
        item_id = int(cur.lastrowid or 0)
        tags = sorted(set(new.tags))
        conn.executemany(
            "INSERT INTO item_tags(item_id, tag) VALUES (?, ?)",
            [(item_id, tag) for tag in tags],
        )
        fulltext.add_row(conn, item_id, new.caption, tags, new.original_name)
        catalog_changes.record(conn, [item_id], "add", created)
        items.append(
            Item(
                id=item_id,
                sha256=new.sha256,
                file=new.file,
                original_name=new.original_name,
                content_type=new.content_type,
                width=new.width,
                height=new.height,
                caption=new.caption,
                tags=tags,
                created_at=created,
                bytes=new.bytes,
            )
        )
    return items


def delete_item(conn: sqlite3.Connection, item_id: int, at: float) -> Item:
    """Delete a row (its tags go with it) and its full-text entry, and log the delete at
    ``at`` (epoch seconds); returns what it held.

    Raises ItemNotFound when there is no such row.
    """
    row = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        raise ItemNotFound(item_id)
    conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
    fulltext.delete_row(conn, item_id)
    catalog_changes.record(conn, [item_id], "delete", at)
    return item_from_row(row)
