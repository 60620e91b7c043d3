"""The store's write path, run under its write lock: a batch of uploads becomes files, then
catalog rows in one transaction, then vectors; a delete undoes the three. Files a failed or
deleted row leaves unused are removed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from index.catalog import Item, NewItem
from index.catalog_factory import CatalogBackend
from index.errors import DuplicateContent, StoreError
from index.files import FileStore
from index.uploads import Upload
from index.vector_copy import VectorCopy

__all__ = ["add_batch", "delete_item"]

# Logged under the store's name, as before these steps moved out of index/store.py.
log = logging.getLogger("index.store")

_DUPLICATE_RETRIES = 3


def add_batch(
    catalog: CatalogBackend,
    files: FileStore,
    copy: VectorCopy,
    uploads: Sequence[Upload],
    rows: Sequence[NewItem],
) -> list[tuple[Item, bool]]:
    """Store the uploads (``rows`` are their validated rows); (item, duplicate) per upload, in
    input order. Repeats inside the batch count as duplicates of the first.

    Raises ValueError for a new upload with an all-zero embedding, StorageFull when the disk
    is full; on any error no row of the batch is stored.
    """
    for attempt in range(_DUPLICATE_RETRIES):
        try:
            return _add_once(catalog, files, copy, uploads, rows)
        except DuplicateContent:
            # A writer outside this data dir's write turn (another replica on the same
            # PostgreSQL catalog) stored one of these meanwhile: look the batch up again.
            if attempt == _DUPLICATE_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _add_once(
    catalog: CatalogBackend,
    files: FileStore,
    copy: VectorCopy,
    uploads: Sequence[Upload],
    rows: Sequence[NewItem],
) -> list[tuple[Item, bool]]:
    results: dict[int, tuple[Item, bool]] = {}
    first_of: dict[str, int] = {}
    fresh: list[int] = []
    for pos, upload in enumerate(uploads):
        existing = catalog.get_by_sha(upload.sha256)
        if existing is not None:
            results[pos] = (existing, True)
        elif upload.sha256 not in first_of:
            first_of[upload.sha256] = pos
            fresh.append(pos)
    if any(not rows[p].embedding.any() for p in fresh):
        # a placeholder sent for an expected duplicate whose original is gone
        raise ValueError("a new item's embedding is all zeros")
    items = _insert(catalog, files, [uploads[p] for p in fresh], [rows[p] for p in fresh])
    results.update((pos, (item, False)) for pos, item in zip(fresh, items, strict=True))
    for pos, upload in enumerate(uploads):
        if pos not in results:
            results[pos] = (results[first_of[upload.sha256]][0], True)
    if items:
        copy.added(
            np.array([i.id for i in items], dtype=np.int64),
            np.stack([rows[p].embedding for p in fresh]),
        )
    return [results[pos] for pos in range(len(uploads))]


def _insert(
    catalog: CatalogBackend, files: FileStore, uploads: Sequence[Upload], rows: Sequence[NewItem]
) -> list[Item]:
    """Files first, then one catalog transaction; on failure drop the files no row uses."""
    if not uploads:
        return []
    written: list[str] = []
    try:
        files.put_many([(u.data, u.sha256, u.ext) for u in uploads], on_written=written.append)
        return catalog.add_many(rows)
    except BaseException:
        for name in written:
            _drop_file_if_unused(catalog, files, name)
        raise


def _drop_file_if_unused(catalog: CatalogBackend, files: FileStore, name: str) -> None:
    try:
        if not catalog.file_referenced(name):
            files.delete(name)
    except (OSError, StoreError) as exc:  # the next open removes it as an orphan
        log.warning("could not remove unused file %s: %s", name, exc)


def delete_item(catalog: CatalogBackend, files: FileStore, copy: VectorCopy, item_id: int) -> Item:
    """Delete an item: its row, its vector, and its file when no other row uses it.

    Raises ItemNotFound; StorageFull when the catalog cannot be written.
    """
    item = catalog.delete(item_id)
    copy.remove(item_id)
    _drop_file_if_unused(catalog, files, item.file)
    copy.changed(1)
    return item
