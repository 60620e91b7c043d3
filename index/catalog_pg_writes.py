"""The PostgreSQL catalog's writes, each inside the caller's read-committed transaction:
recording the model, inserting rows with their tags, full text and change-log entries, deleting
a row. The SQLite catalog's index/catalog_writes.py, in PostgreSQL's dialect."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg

from index import catalog_pg_text as text
from index.catalog_pg_schema import CHANGES_LOCK, ITEM_COLUMNS, MODEL_LOCK, NOTIFY
from index.catalog_schema import Item, NewItem, item_from_row
from index.errors import DimensionMismatch, ItemNotFound, ModelMismatch, StoreError

__all__ = ["delete_item", "insert_items", "log_changes", "record_model"]


def record_model(conn: psycopg.Connection, name: str, dim: int) -> None:
    """Record the model on first use; afterwards refuse another model's dimension or name.

    An empty catalog adopts the new model. Raises DimensionMismatch when the stored
    dimension differs, ModelMismatch when only the model name differs.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MODEL_LOCK,))
    meta: dict[str, str] = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    row = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM items)").fetchone()
    empty = bool(row and row[0])
    stored_name, stored_dim = meta.get("model_name"), meta.get("embed_dim")
    if stored_dim is not None and not empty:
        if int(stored_dim) != dim:
            raise DimensionMismatch(int(stored_dim), dim)
        if stored_name != name:
            raise ModelMismatch(
                f"the catalog holds embeddings of model {stored_name!r}, but the "
                f"service loaded {name!r}; vectors of two models cannot be compared. "
                "Use the original model, or a new database for this one",
                stored=str(stored_name),
                current=name,
            )
    if (stored_name, stored_dim) != (name, str(dim)):
        conn.cursor().executemany(
            "INSERT INTO meta(key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [("model_name", name), ("embed_dim", str(dim))],
        )


def log_changes(conn: psycopg.Connection, item_ids: Sequence[int], op: str) -> None:
    """Append one change per item, in order, and notify listeners of the last seq.

    Takes CHANGES_LOCK until the caller's transaction ends: sequence numbers are drawn and
    committed one transaction at a time, so a reader that has seen seq N never later sees a
    smaller one appear. Everything before it (the rows, their bytea) is written concurrently.
    """
    if not item_ids:
        return
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGES_LOCK,))
    conn.execute(
        "WITH logged AS (INSERT INTO changes(item_id, op) SELECT id, %s FROM"
        " unnest(%s::bigint[]) WITH ORDINALITY AS u(id, n) ORDER BY n RETURNING seq)"
        " SELECT pg_notify(%s, max(seq)::text) FROM logged",
        (op, list(item_ids), NOTIFY),
    )


def insert_items(conn: psycopg.Connection, news: Sequence[NewItem], created: float) -> list[Item]:
    """Insert rows, their tags, full text and ``add`` changes, created at ``created``;
    returns the stored items.

    Raises psycopg.errors.UniqueViolation for a sha256 already stored.
    """
    cur = conn.cursor()
    cur.executemany(
        "INSERT INTO items(sha256, file, original_name, content_type, width, height,"
        " caption, created_at, bytes, embedding, tokens, tokens_shape, caption_tsv,"
        " tags_tsv, name_tsv) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " to_tsvector('simple', %s), to_tsvector('simple', %s),"
        " to_tsvector('simple', %s)) RETURNING id",
        [_insert_args(new, created) for new in news],
        returning=True,
    )
    ids = _returned_ids(cur)
    tags = [(i, t) for i, new in zip(ids, news, strict=True) for t in sorted(set(new.tags))]
    if tags:
        cur.executemany("INSERT INTO item_tags(item_id, tag) VALUES (%s, %s)", tags)
    log_changes(conn, ids, "add")
    return [_item(i, new, created) for i, new in zip(ids, news, strict=True)]


def delete_item(conn: psycopg.Connection, item_id: int) -> Item:
    """Delete a row (its tags go with it) and log the ``delete``; returns what it held.

    Raises ItemNotFound when there is no such row (also when a concurrent delete won).
    """
    row = conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s FOR UPDATE", (item_id,)
    ).fetchone()
    if row is None:
        raise ItemNotFound(item_id)
    conn.execute("DELETE FROM items WHERE id = %s", (item_id,))
    log_changes(conn, [item_id], "delete")
    return item_from_row(row)


def _returned_ids(cur: psycopg.Cursor) -> list[int]:
    """The ids an ``executemany(..., returning=True)`` insert gave, in order."""
    ids = []
    while True:
        row = cur.fetchone()
        if row is None:
            raise StoreError("the database returned no id for an inserted row")
        ids.append(int(row[0]))
        if not cur.nextset():
            return ids


def _insert_args(new: NewItem, created: float) -> tuple[object, ...]:
    tokens, shape = None, None
    if new.tokens is not None:
        tok = np.ascontiguousarray(new.tokens, dtype="<f2")
        tokens, shape = tok.tobytes(), ",".join(str(s) for s in tok.shape)
    return (
        new.sha256, new.file, new.original_name, new.content_type, new.width, new.height,
        new.caption, created, new.bytes,
        np.ascontiguousarray(new.embedding, dtype="<f4").tobytes(), tokens, shape,
        text.normalise(new.caption), text.normalise(" ".join(sorted(set(new.tags)))),
        text.normalise(new.original_name),
    )


def _item(item_id: int, new: NewItem, created: float) -> Item:
    return Item(
        id=item_id, sha256=new.sha256, file=new.file, original_name=new.original_name,
        content_type=new.content_type, width=new.width, height=new.height, caption=new.caption,
        tags=sorted(set(new.tags)), created_at=created, bytes=new.bytes,
    )
