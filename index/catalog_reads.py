"""The catalog's queries, each inside the caller's read transaction: items by id, digest or
page, ids by tag, and the stored embeddings and patch tokens as arrays."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from index.catalog_schema import ITEM_COLUMNS, Item, chunks, item_from_row, marks
from index.errors import ItemNotFound, TokensUnavailable

__all__ = [
    "embedding_rows",
    "embedding_rows_after",
    "item_by_id",
    "item_by_sha",
    "items_by_ids",
    "page",
    "stack_embeddings",
    "stack_tokens",
    "tagged_ids",
    "token_blobs",
]

EmbeddingRows = list[tuple[int, bytes]]
TokenBlobs = dict[int, tuple[bytes | None, str | None]]


def item_by_id(conn: sqlite3.Connection, item_id: int) -> Item | None:
    """The row with this id, or None."""
    row = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
    return None if row is None else item_from_row(row)


def item_by_sha(conn: sqlite3.Connection, sha256: str) -> Item | None:
    """The row holding this content digest, or None."""
    row = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else item_from_row(row)


def items_by_ids(conn: sqlite3.Connection, wanted: Sequence[int]) -> dict[int, Item]:
    """Rows by id; ids with no row are absent from the result."""
    found: dict[int, Item] = {}
    for chunk in chunks(wanted):
        rows = conn.execute(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE id IN ({marks(len(chunk))})",
            chunk,
        ).fetchall()
        found.update((item.id, item) for item in map(item_from_row, rows))
    return found


def page(
    conn: sqlite3.Connection, offset: int, limit: int, tag: str | None
) -> tuple[list[Item], int]:
    """One page of rows, newest (highest id) first, and the total matching count."""
    where = ""
    args: tuple[str, ...] = ()
    if tag is not None:
        where, args = "WHERE id IN (SELECT item_id FROM item_tags WHERE tag = ?)", (tag,)
    total = conn.execute(f"SELECT COUNT(*) FROM items {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM items {where} ORDER BY id DESC LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [item_from_row(r) for r in rows], int(total)


def tagged_ids(conn: sqlite3.Connection, wanted: tuple[str, ...]) -> frozenset[int]:
    """Ids of the rows carrying every one of ``wanted`` (all rows' ids for none)."""
    if not wanted:
        rows = conn.execute("SELECT id FROM items")
    elif len(wanted) == 1:
        rows = conn.execute("SELECT item_id FROM item_tags WHERE tag = ?", wanted)
    else:
        rows = conn.execute(
            f"SELECT item_id FROM item_tags WHERE tag IN ({marks(len(wanted))})"
            " GROUP BY item_id HAVING COUNT(*) = ?",
            (*wanted, len(wanted)),
        )
    return frozenset(r[0] for r in rows)


def embedding_rows_after(conn: sqlite3.Connection, last: int, batch: int) -> EmbeddingRows:
    """(id, embedding blob) of at most ``batch`` rows with id > ``last``, ascending."""
    return conn.execute(
        "SELECT id, embedding FROM items WHERE id > ? ORDER BY id LIMIT ?",
        (last, batch),
    ).fetchall()


def embedding_rows(conn: sqlite3.Connection, wanted: Sequence[int]) -> EmbeddingRows:
    """(id, embedding blob) of the given ids (sorted), ascending; missing ids left out."""
    rows: EmbeddingRows = []
    for chunk in chunks(wanted):
        rows += conn.execute(
            f"SELECT id, embedding FROM items WHERE id IN ({marks(len(chunk))}) ORDER BY id",
            chunk,
        ).fetchall()
    return rows


def stack_embeddings(
    rows: Sequence[tuple[int, bytes]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(ids, vectors (n, D) float32) of (id, embedding blob) rows."""
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32)
    flat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4")
    return ids, flat.reshape(len(rows), -1).astype(np.float32, copy=False)


def token_blobs(conn: sqlite3.Connection, wanted: Sequence[int]) -> TokenBlobs:
    """id -> (tokens blob, shape text) of the given ids; missing ids left out."""
    found: TokenBlobs = {}
    for chunk in chunks(sorted(set(wanted))):
        rows = conn.execute(
            f"SELECT id, tokens, tokens_shape FROM items WHERE id IN ({marks(len(chunk))})",
            chunk,
        )
        found.update((r[0], (r[1], r[2])) for r in rows)
    return found


def stack_tokens(wanted: Sequence[int], found: TokenBlobs) -> npt.NDArray[np.float16]:
    """Patch tokens (n, T, W) float16 of ``wanted``, in that order, from ``token_blobs``.

    Raises ItemNotFound for an id with no row, TokensUnavailable for a row stored without
    tokens or with tokens of another shape than the first row's.
    """
    out: npt.NDArray[np.float16] | None = None
    shape: tuple[int, ...] = ()
    shape_seen = ""
    for j, item_id in enumerate(wanted):
        if item_id not in found:
            raise ItemNotFound(item_id)
        blob, shape_text = found[item_id]
        if blob is None or not shape_text:
            raise TokensUnavailable(item_id, "stored without tokens")
        if shape_text != shape_seen:  # parsed once, not once per row
            row_shape = tuple(int(s) for s in shape_text.split(","))
            if out is not None and row_shape != shape:
                raise TokensUnavailable(item_id, f"shape {row_shape} differs from {shape}")
            shape, shape_seen = row_shape, shape_text
        if out is None:  # one array, each row copied into it once
            out = np.empty((len(wanted), *shape), dtype=np.float16)
        out[j] = np.frombuffer(blob, dtype="<f2").reshape(shape)
    if out is None:
        return np.zeros((0, 0, 0), dtype=np.float16)
    return out
