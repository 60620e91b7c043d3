"""The catalog's tables and row types: the SQL schema, ``Item`` and ``NewItem``, and the helpers
that turn rows into items and split long id lists for ``IN (...)`` queries."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["ITEM_COLUMNS", "SCHEMA", "Item", "NewItem", "chunks", "item_from_row", "marks"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT UNIQUE NOT NULL,
    file TEXT NOT NULL,
    original_name TEXT,
    content_type TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    caption TEXT,
    created_at REAL NOT NULL,
    bytes INTEGER,
    embedding BLOB NOT NULL,
    tokens BLOB,
    tokens_shape TEXT
);
CREATE INDEX IF NOT EXISTS items_file ON items(file);
CREATE TABLE IF NOT EXISTS item_tags (
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (item_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS item_tags_tag ON item_tags(tag, item_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

ITEM_COLUMNS = """
    id, sha256, file, original_name, content_type, width, height, caption, created_at, bytes,
    (SELECT json_group_array(tag) FROM
        (SELECT tag FROM item_tags WHERE item_id = items.id ORDER BY tag)) AS tags
"""

# Stay well under SQLite's bound-parameter limit in IN (...) lists.
_CHUNK = 500


@dataclass(frozen=True)
class Item:
    """Metadata of one stored image (no vectors)."""

    id: int
    sha256: str
    file: str
    original_name: str | None
    content_type: str
    width: int | None
    height: int | None
    caption: str | None
    tags: list[str]
    created_at: float
    bytes: int | None


@dataclass(frozen=True)
class NewItem:
    """A row to insert; ``embedding`` is (D,) float32, ``tokens`` (T, W) float16 or None."""

    sha256: str
    file: str
    content_type: str
    embedding: npt.NDArray[np.float32]
    original_name: str | None = None
    width: int | None = None
    height: int | None = None
    caption: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)
    tokens: npt.NDArray[np.float16] | None = None
    bytes: int | None = None


def item_from_row(row: Sequence[object]) -> Item:
    """The ``Item`` of a row selected with ``ITEM_COLUMNS``."""
    (id_, sha, file, original, ctype, width, height, caption, created, size, tags) = row
    return Item(
        id=int(id_),  # type: ignore[call-overload]
        sha256=str(sha),
        file=str(file),
        original_name=original,  # type: ignore[arg-type]
        content_type=str(ctype),
        width=width,  # type: ignore[arg-type]
        height=height,  # type: ignore[arg-type]
        caption=caption,  # type: ignore[arg-type]
        tags=json.loads(str(tags)),
        created_at=float(created),  # type: ignore[arg-type]
        bytes=size,  # type: ignore[arg-type]
    )


def chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    """``values`` in slices short enough to bind in one ``IN (...)`` list."""
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def marks(n: int) -> str:
    """``n`` comma-separated parameter marks."""
    return ",".join("?" * n)
