"""``Store``: the one object the app uses for storage and search.

Layout of a data dir::

    catalog.sqlite3        the source of truth (rows, tags, embeddings, tokens)
    files/ab/cd/<sha>.ext  image bytes, content-addressed
    index/vectors.faiss    FAISS snapshot, derived; replayed or rebuilt from the catalog

An upload is acknowledged once its SQLite transaction commits (``synchronous=FULL``); the file
was made durable before that, and the FAISS copy catches up from the catalog on the next start
if the process dies in between.

Opened ``shared=True``, several processes serve one data dir: each commits its own writes (taking
turns, see ``index.store_sharing``) and follows the others' through the catalog's change log.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from index.catalog import Item
from index.catalog_factory import CatalogBackend
from index.choice import DEFAULT_THRESHOLDS, Thresholds, parse_bytes
from index.errors import CatalogUnavailable, IndexNotReady, ItemNotFound, StoreError
from index.files import FileStore
from index.store_open import CATALOG_NAME, FILES_DIR, INDEX_DIR, SNAPSHOT_NAME, open_parts
from index.store_search import vector_search
from index.store_sharing import DataDirAccess
from index.store_writes import add_batch, delete_item
from index.uploads import Upload, clean_tags, new_row
from index.vector_copy import VectorCopy
from index.vectors import Hits, VectorIndex

__all__ = ["CATALOG_NAME", "FILES_DIR", "INDEX_DIR", "SNAPSHOT_NAME", "Store", "Upload"]

FOLLOW_INTERVAL_S = 0.2


class Store:
    """Catalog + files + vectors of one data dir. Thread-safe: writes are serialised by one
    lock, reads and searches run concurrently with them and with each other."""

    def __init__(
        self,
        data_dir: Path,
        catalog: CatalogBackend,
        files: FileStore,
        access: DataDirAccess,
        copy: VectorCopy,
    ) -> None:
        """Use ``Store.open``; this only assembles already opened parts."""
        self.data_dir = data_dir
        self.dim = copy.dim
        self.model_name = copy.model_name
        self.thresholds = copy.thresholds
        self._catalog = catalog
        self._files = files
        self._access = access
        self._write_lock = threading.RLock()
        self._copy = copy
        self._closed = False

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path,
        dim: int,
        model_name: str,
        factory: str = "auto",
        memory_budget: str | int = "2GB",
        snapshot_every: int = 1000,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        shared: bool = False,
        follow_interval: float = FOLLOW_INTERVAL_S,
        database_url: str | None = None,
        files_dir: Path | None = None,
    ) -> Store:
        """Open (creating if needed) the data dir and bring the vector index up to date.

        Removes files no row references and temp files of interrupted writes, loads the FAISS
        snapshot and replays the changes it lacks, or rebuilds it from the catalog when it is
        missing or unusable, or when the collection has outgrown its index type.

        ``shared``: other processes may open the data dir shared too; a search applies their
        writes logged before it began, and a follower thread applies them every
        ``follow_interval`` seconds in between. Cleanup at start runs only when no other
        process holds the data dir. Not shared, the store holds the data dir alone.

        ``database_url`` (``postgresql://...``) keeps the catalog in PostgreSQL instead of the
        data dir's SQLite file; ``files_dir`` puts the image files elsewhere than ``files/`` in
        the data dir. Replicas on several machines share both, each with its own data dir.

        Raises ValueError for a bad factory, budget, snapshot_every or follow_interval;
        DimensionMismatch or ModelMismatch when the data dir holds another model's embeddings;
        DataDirLocked when another process holds the data dir in a way this one cannot join;
        StoreError when the catalog cannot be opened; CatalogUnavailable when its database
        server cannot be reached.
        """
        if dim < 1 or snapshot_every < 1 or follow_interval <= 0:
            raise ValueError("dim, snapshot_every and follow_interval must be positive")
        budget = parse_bytes(memory_budget)
        if factory != "auto":
            VectorIndex.create(dim, factory)  # fail fast on a factory FAISS cannot build
        parts = open_parts(Path(data_dir), dim, model_name, factory, budget, snapshot_every,
                           thresholds, shared, database_url, files_dir)
        store = cls(Path(data_dir), parts.catalog, parts.files, parts.access, parts.copy)
        # a catalog with change notifications (PostgreSQL) wakes the follower at once
        parts.access.follow(store.catch_up, follow_interval,
                            getattr(parts.catalog, "wait_for_change", None))
        return store

    # -- writes ------------------------------------------------------------------------------

    def add(
        self,
        data: bytes,
        *,
        sha256: str,
        ext: str,
        content_type: str,
        embedding: npt.NDArray[np.float32],
        tokens: npt.NDArray[np.float16] | None = None,
        width: int | None = None,
        height: int | None = None,
        original_name: str | None = None,
        caption: str | None = None,
        tags: Sequence[str] = (),
    ) -> tuple[Item, bool]:
        """Store one image; returns (item, duplicate). A duplicate (same sha256) returns the
        existing item and writes nothing.

        Raises ValueError when sha256 is not the data's digest, ext is invalid or tokens are
        not (T, W);
        DimensionMismatch for an embedding of another dimension; StorageFull when the disk is
        full (nothing is kept); IndexNotReady when the store is closed.
        """
        upload = Upload(
            data=data,
            sha256=sha256,
            ext=ext,
            content_type=content_type,
            embedding=embedding,
            tokens=tokens,
            width=width,
            height=height,
            original_name=original_name,
            caption=caption,
            tags=tags,
        )
        return self.add_many([upload])[0]

    def add_many(self, uploads: Sequence[Upload]) -> list[tuple[Item, bool]]:
        """Store a batch in one catalog transaction; results are in input order, each
        (item, duplicate). Repeats inside the batch count as duplicates of the first.

        An upload whose sha256 is already stored may carry a placeholder (zero) embedding; one
        that turns out to be new must not (ValueError), so a duplicate deleted in between is
        never stored with a meaningless vector. Raises like ``add``; on any error no row of the
        batch is stored.
        """
        self._check_open()
        rows = [new_row(u, self.dim) for u in uploads]
        with self._write_lock, self._access.writing():
            self._check_open()
            return add_batch(self._catalog, self._files, self._copy, uploads, rows)

    def delete(self, item_id: int) -> Item:
        """Delete an item: its row, its vector, and its file when no other row uses it.

        Raises ItemNotFound; StorageFull when the catalog cannot be written; IndexNotReady
        when the store is closed.
        """
        self._check_open()
        with self._write_lock, self._access.writing():
            self._check_open()
            item = delete_item(self._catalog, self._files, self._copy, item_id)
        return item

    def catch_up(self) -> int:
        """Apply the writes other processes logged since the last call to the vector index;
        returns how many log entries were read (the follower thread calls this).

        Raises IndexNotReady when the store is closed.
        """
        with self._write_lock:
            self._check_open()
            return self._copy.catch_up()

    def _see_others_writes(self) -> None:
        """Shared: apply the writes other processes logged before this read began, so a
        search finds every upload acknowledged before it started, whichever process took it
        (one look at the log's last seq; the follower applies them between searches too)."""
        if not self._access.shared:
            return
        try:
            if self._catalog.last_seq() > self._copy.seq:
                self.catch_up()
        except CatalogUnavailable:
            pass  # the index as held; the follower carries on when the database is back

    @property
    def seq(self) -> int:
        """The catalog change-log seq the vector index holds every change up to."""
        return self._copy.seq

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Write the FAISS snapshot now.

        Raises IndexNotReady when there is no usable index or the store is closed,
        StorageFull when the disk is full, OSError for other I/O failures.
        """
        with self._write_lock:
            self._check_open()
            self._copy.snapshot()

    def rebuild(self, factory: str | None = None) -> None:
        """Rebuild the vector index from the catalog (``factory`` overrides the choice once);
        searches keep using the old index until the new one is swapped in.

        Raises ValueError for a factory FAISS cannot build, IndexNotReady when closed.
        """
        with self._write_lock:
            self._check_open()
            self._copy.rebuild(factory)

    # -- reads -------------------------------------------------------------------------------

    def get(self, item_id: int) -> Item:
        """The item with this id. Raises ItemNotFound, IndexNotReady when closed."""
        self._check_open()
        return self._catalog.get(item_id)

    def get_many(self, ids: Iterable[int]) -> dict[int, Item]:
        """Items by id; ids that no longer exist are absent. Raises IndexNotReady when closed."""
        self._check_open()
        return self._catalog.get_many(ids)

    def get_by_sha(self, sha256: str) -> Item | None:
        """The item with this content digest, or None (check before paying for encoding).

        Raises IndexNotReady when closed.
        """
        self._check_open()
        return self._catalog.get_by_sha(sha256)

    def list(
        self, offset: int = 0, limit: int = 50, tag: str | None = None
    ) -> tuple[list[Item], int]:
        """A page of items, newest first, and the total count (of those with ``tag``, if given).

        Raises ValueError for a negative offset/limit, IndexNotReady when closed.
        """
        self._check_open()
        return self._catalog.list(offset, limit, tag)

    def file_path(self, item_id: int) -> tuple[Path, str]:
        """Path of the item's image file and its content type.

        Raises ItemNotFound; StoreError when the file has gone missing from disk.
        """
        item = self.get(item_id)
        path = self._files.path(item.file)
        if not path.is_file():
            raise StoreError(f"the file of item {item_id} is missing from {self._files.root}")
        return path, item.content_type

    def tokens(self, ids: Sequence[int]) -> npt.NDArray[np.float16]:
        """Stored patch tokens (n, T, W) float16, in the order of ``ids``.

        Raises ItemNotFound, TokensUnavailable, IndexNotReady when closed.
        """
        self._check_open()
        return self._catalog.tokens(ids)

    def embedding(self, item_id: int) -> npt.NDArray[np.float32]:
        """The stored (D,) embedding of an item. Raises ItemNotFound, IndexNotReady when closed."""
        return self.embeddings([item_id])[0]

    def embeddings(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Stored (n, D) embeddings in the order of ``ids``, read in one query.

        Raises ItemNotFound for an id with no row, IndexNotReady when closed.
        """
        self._check_open()
        found_ids, vecs = self._catalog.embeddings_for(ids)
        row = {int(i): j for j, i in enumerate(found_ids.tolist())}
        for item_id in ids:
            if int(item_id) not in row:
                raise ItemNotFound(int(item_id))
        return vecs[[row[int(i)] for i in ids]]

    def search(
        self,
        query_vecs: npt.ArrayLike,
        k: int,
        tags: Sequence[str] | None = None,
        exclude_ids: Collection[int] = (),
    ) -> builtins.list[Hits]:
        """Top-k (id, inner-product score) per query row, best first.

        ``tags``: only items carrying all of them; up to k of those are returned however rare
        they are. ``exclude_ids`` never appear (e.g. the query image itself). An id deleted
        while the search runs may still appear once; ``get_many`` then leaves it out.

        Raises ValueError for k < 1 or bad queries, DimensionMismatch for queries of another
        dimension, IndexNotReady when the vector index is unavailable or the store closed.
        """
        self._check_open()
        self._see_others_writes()
        return vector_search(
            self._copy.vectors,
            self._catalog,
            self.dim,
            self.thresholds,
            query_vecs,
            k,
            tags,
            exclude_ids,
        )

    def keyword_search(
        self, query: str, k: int, tags: Sequence[str] | None = None, syntax: str = "terms"
    ) -> builtins.list[tuple[int, float]]:
        """Top-k (id, BM25 relevance) of items whose caption, tags or original file name match
        ``query`` (see ``index.fulltext.expression`` for the two syntaxes), best first.

        Raises BadQuery for an FTS5 query that does not parse, ValueError for k < 1,
        IndexNotReady when the store is closed.
        """
        self._check_open()
        if k < 1:
            raise ValueError("k must be at least 1")
        return self._catalog.keyword_search(query, k, clean_tags(tags), syntax)

    def stats(self) -> dict[str, Any]:
        """count (catalog rows), vectors (searchable), factory, dim, snapshot_max_id (None
        before the first snapshot), model, tombstones. Raises IndexNotReady when closed."""
        self._check_open()
        vectors = self._copy.vectors
        return {
            "count": self._catalog.count(),
            "vectors": vectors.ntotal if vectors is not None else 0,
            "factory": vectors.factory if vectors is not None else None,
            "dim": self.dim,
            "snapshot_max_id": self._copy.snapshot_max_id,
            "model": self.model_name,
            "tombstones": vectors.tombstones if vectors is not None else 0,
        }

    # -- maintenance -------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """SQLite's integrity check of the catalog: "ok" or the problems found.

        Raises IndexNotReady when closed.
        """
        self._check_open()
        return self._catalog.integrity_check()

    def backup(self, dest_path: Path) -> None:
        """Copy a consistent snapshot of the catalog (the source of truth) to ``dest_path``.

        Raises StoreError when the copy fails, IndexNotReady when closed.
        """
        self._check_open()
        self._catalog.backup(dest_path)

    def close(self) -> None:
        """Snapshot the vectors if anything changed, then close. Idempotent."""
        self._access.stop_following()  # outside the write lock, which a step takes
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._copy.changes and self._copy.vectors is not None:
                    self._copy.snapshot_quietly()
            finally:
                self._catalog.close()
                self._access.close()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexNotReady("the store is closed")

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
