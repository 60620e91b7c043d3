"""``Store``: the one object the app uses for storage and search.

Layout of a data dir::

    catalog.sqlite3        the source of truth (rows, tags, embeddings, tokens)
    files/ab/cd/<sha>.ext  image bytes, content-addressed
    index/vectors.faiss    FAISS snapshot, derived; replayed or rebuilt from the catalog

An upload is acknowledged once its SQLite transaction commits (``synchronous=FULL``); the file
was made durable before that, and the FAISS copy catches up from the catalog on the next start
if the process dies in between.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from index.atomic import remove_temps
from index.catalog import Catalog, Item, NewItem
from index.choice import (
    DEFAULT_THRESHOLDS,
    Thresholds,
    choose_factory,
    min_training_points,
    needs_rebuild,
    parse_bytes,
)
from index.dirlock import DirLock
from index.errors import IndexNotReady, ItemNotFound, StoreError
from index.files import FileStore, file_name
from index.vectors import Hits, VectorIndex, as_matrix

__all__ = ["Store", "Upload"]

log = logging.getLogger(__name__)

CATALOG_NAME = "catalog.sqlite3"
FILES_DIR = "files"
INDEX_DIR = "index"
SNAPSHOT_NAME = "vectors.faiss"
_TRAIN_SAMPLE_MAX = 100_000
_REPLAY_CHUNK = 10_000


@dataclass(frozen=True)
class Upload:
    """One image to store: its bytes, what the model made of it, and user metadata."""

    data: bytes
    sha256: str
    ext: str
    content_type: str
    embedding: npt.NDArray[np.float32]
    tokens: npt.NDArray[np.float16] | None = None
    width: int | None = None
    height: int | None = None
    original_name: str | None = None
    caption: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)


def clean_tags(tags: Iterable[str] | None) -> list[str]:
    """Tags stripped of surrounding space, without empties or repeats, sorted.

    Raises TypeError for a tag that is not a string.
    """
    cleaned = set()
    for tag in tags or ():
        if not isinstance(tag, str):
            raise TypeError(f"tags must be strings, got {type(tag).__name__}")
        if tag.strip():
            cleaned.add(tag.strip())
    return sorted(cleaned)


class Store:
    """Catalog + files + vectors of one data dir. Thread-safe: writes are serialised by one
    lock, reads and searches run concurrently with them and with each other."""

    def __init__(
        self,
        data_dir: Path,
        dim: int,
        model_name: str,
        factory: str,
        memory_budget_bytes: int,
        snapshot_every: int,
        thresholds: Thresholds,
        catalog: Catalog,
        files: FileStore,
        lock: DirLock,
    ) -> None:
        """Use ``Store.open``; this only assembles already opened parts."""
        self.data_dir = data_dir
        self.dim = dim
        self.model_name = model_name
        self.factory_setting = factory
        self.memory_budget_bytes = memory_budget_bytes
        self.snapshot_every = snapshot_every
        self.thresholds = thresholds
        self._catalog = catalog
        self._files = files
        self._lock = lock
        self._snapshot_path = data_dir / INDEX_DIR / SNAPSHOT_NAME
        self._write_lock = threading.RLock()
        self._vectors: VectorIndex | None = None
        self._snapshot_max_id: int | None = None
        self._changes = 0
        self._retry_rebuild_at = 0
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
    ) -> Store:
        """Open (creating if needed) the data dir and bring the vector index up to date.

        Removes files no row references and temp files of interrupted writes, loads the FAISS
        snapshot and replays the rows it lacks, or rebuilds it from the catalog when it is
        missing or unusable, or when the collection has outgrown its index type.

        Raises ValueError for a bad factory, budget or snapshot_every; DimensionMismatch or
        ModelMismatch when the data dir holds another model's embeddings; DataDirLocked when
        another process serves the data dir; StoreError when the catalog cannot be opened.
        """
        if dim < 1 or snapshot_every < 1:
            raise ValueError("dim and snapshot_every must be positive")
        budget = parse_bytes(memory_budget)
        if factory != "auto":
            VectorIndex.create(dim, factory)  # fail fast on a factory FAISS cannot build
        data_dir = Path(data_dir)
        for folder in (data_dir, data_dir / FILES_DIR, data_dir / INDEX_DIR):
            folder.mkdir(parents=True, exist_ok=True)
        lock = DirLock(data_dir)
        catalog: Catalog | None = None
        try:
            catalog = Catalog(data_dir / CATALOG_NAME)
            catalog.check_model(model_name, dim)
            store = cls(
                data_dir,
                dim,
                model_name,
                factory,
                budget,
                snapshot_every,
                thresholds,
                catalog,
                FileStore(data_dir / FILES_DIR),
                lock,
            )
            store._clean_files()
            with store._write_lock:
                store._load_vectors()
        except BaseException:
            if catalog is not None:
                catalog.close()
            lock.release()
            raise
        return store

    def _clean_files(self) -> None:
        """Remove temp files and files no row references (uploads never acknowledged)."""
        stale = self._files.remove_stale_temps() + remove_temps(self.data_dir / INDEX_DIR)
        referenced = self._catalog.all_files()
        orphans = [name for name in self._files.list_names() if name not in referenced]
        for name in orphans:
            self._files.delete(name)
        if stale or orphans:
            log.info("removed %d temp files and %d orphan files", stale, len(orphans))

    def _load_vectors(self) -> None:
        loaded = VectorIndex.load(self._snapshot_path, self.dim, self.model_name)
        if loaded is not None:
            self._snapshot_max_id = loaded.max_id
            self._changes = self._reconcile(loaded)
            if not self._wants_rebuild(loaded):
                self._vectors = loaded
                return
            log.info("snapshot index %s no longer fits the collection", loaded.factory)
        self._rebuild_locked(None)

    def _reconcile(self, vectors: VectorIndex) -> int:
        """Make a loaded snapshot hold exactly the catalog's rows; returns how many changed."""
        rows = self._catalog.ids()
        held = vectors.ids()
        extra = np.setdiff1d(held, rows, assume_unique=True)
        missing = np.setdiff1d(rows, held, assume_unique=True)
        vectors.remove(extra.tolist())
        for start in range(0, missing.size, _REPLAY_CHUNK):
            ids, vecs = self._catalog.embeddings_for(
                missing[start : start + _REPLAY_CHUNK].tolist()
            )
            vectors.add(ids, vecs)
        if extra.size or missing.size:
            log.info(
                "snapshot (max id %d): replayed %d rows, dropped %d deleted",
                vectors.max_id,
                missing.size,
                extra.size,
            )
        return int(extra.size + missing.size)

    # -- index choice ------------------------------------------------------------------------

    def _desired_factory(self, count: int) -> str:
        if self.factory_setting == "auto":
            return choose_factory(count, self.dim, self.memory_budget_bytes, self.thresholds)
        if count < min_training_points(self.factory_setting):
            return "Flat"
        return self.factory_setting

    def _wants_rebuild(self, vectors: VectorIndex) -> bool:
        count = vectors.ntotal
        dead = vectors.tombstones
        if dead > self.thresholds.compact_min and dead > self.thresholds.compact_fraction * (
            count + dead
        ):
            return True
        if self.factory_setting == "auto":
            return needs_rebuild(
                vectors.factory, count, self.dim, self.memory_budget_bytes, self.thresholds
            )
        return vectors.factory != self._desired_factory(count)

    def _build(self, factory: str) -> VectorIndex:
        """A new index of this type filled from the catalog; the caller holds the write lock."""
        vectors = VectorIndex.create(self.dim, factory)
        if not vectors.is_trained:
            try:
                vectors.train(self._training_sample())
            except (RuntimeError, ValueError) as exc:
                log.warning(
                    "cannot train %s (%s); using Flat until there is more data", factory, exc
                )
                vectors = VectorIndex.create(self.dim, "Flat")
                # Try again only after clear growth, not on every write.
                self._retry_rebuild_at = self._grown(self._catalog.count())
        for ids, vecs in self._catalog.embeddings():
            vectors.add(ids, vecs)
        return vectors

    def _training_sample(self) -> npt.NDArray[np.float32]:
        count = self._catalog.count()
        keep = min(1.0, _TRAIN_SAMPLE_MAX / max(count, 1))
        rng = np.random.default_rng(0)
        parts = [vecs[rng.random(len(vecs)) < keep] for _, vecs in self._catalog.embeddings()]
        return np.vstack(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def _rebuild_locked(self, factory: str | None) -> None:
        count = self._catalog.count()
        target = factory or self._desired_factory(count)
        log.info("building a %s index over %d vectors", target, count)
        self._vectors = self._build(target)
        self._changes = 0
        self._snapshot_quietly()

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
        rows = [self._row(u) for u in uploads]
        with self._write_lock:
            self._check_open()
            results: dict[int, tuple[Item, bool]] = {}
            first_of: dict[str, int] = {}
            fresh: list[int] = []
            for pos, upload in enumerate(uploads):
                existing = self._catalog.get_by_sha(upload.sha256)
                if existing is not None:
                    results[pos] = (existing, True)
                elif upload.sha256 not in first_of:
                    first_of[upload.sha256] = pos
                    fresh.append(pos)
            if any(not rows[p].embedding.any() for p in fresh):
                # a placeholder sent for an expected duplicate whose original is gone
                raise ValueError("a new item's embedding is all zeros")
            items = self._insert([uploads[p] for p in fresh], [rows[p] for p in fresh])
            results.update((pos, (item, False)) for pos, item in zip(fresh, items, strict=True))
            for pos, upload in enumerate(uploads):
                if pos not in results:
                    results[pos] = (results[first_of[upload.sha256]][0], True)
            if items:
                self._index_added(
                    np.array([i.id for i in items], dtype=np.int64),
                    np.stack([rows[p].embedding for p in fresh]),
                )
        return [results[pos] for pos in range(len(uploads))]

    def _row(self, upload: Upload) -> NewItem:
        """Validate an upload into the catalog row it becomes (raises like ``add``)."""
        if hashlib.sha256(upload.data).hexdigest() != upload.sha256:
            raise ValueError("sha256 does not match the data")
        if upload.tokens is not None and np.ndim(upload.tokens) != 2:
            raise ValueError(f"tokens must be (T, W), got shape {np.shape(upload.tokens)}")
        return NewItem(
            sha256=upload.sha256,
            file=file_name(upload.sha256, upload.ext),
            content_type=upload.content_type,
            embedding=as_matrix(upload.embedding, self.dim)[0],
            original_name=upload.original_name,
            width=upload.width,
            height=upload.height,
            caption=upload.caption,
            tags=clean_tags(upload.tags),
            tokens=upload.tokens,
            bytes=len(upload.data),
        )

    def _insert(self, uploads: Sequence[Upload], rows: Sequence[NewItem]) -> list[Item]:
        """Files first, then one catalog transaction; on failure drop the files no row uses."""
        if not uploads:
            return []
        written: list[str] = []
        try:
            for upload in uploads:
                written.append(self._files.put(upload.data, upload.sha256, upload.ext))
            return self._catalog.add_many(rows)
        except BaseException:
            for name in written:
                self._drop_file_if_unused(name)
            raise

    def _drop_file_if_unused(self, name: str) -> None:
        try:
            if not self._catalog.file_referenced(name):
                self._files.delete(name)
        except (OSError, StoreError) as exc:  # the next open removes it as an orphan
            log.warning("could not remove unused file %s: %s", name, exc)

    def _index_added(self, ids: npt.NDArray[np.int64], vecs: npt.NDArray[np.float32]) -> None:
        """Mirror committed rows into FAISS; the rows are durable whatever happens here."""
        try:
            if self._vectors is None:
                raise IndexNotReady("vector index unavailable")
            self._vectors.add(ids, vecs)
        except Exception:
            log.exception("adding to the vector index failed; rebuilding it from the catalog")
            self._recover()
            return
        self._changes += len(ids)
        self._maintain()

    def delete(self, item_id: int) -> Item:
        """Delete an item: its row, its vector, and its file when no other row uses it.

        Raises ItemNotFound; StorageFull when the catalog cannot be written; IndexNotReady
        when the store is closed.
        """
        self._check_open()
        with self._write_lock:
            self._check_open()
            item = self._catalog.delete(item_id)
            if self._vectors is not None:
                self._vectors.remove([item_id])
            self._drop_file_if_unused(item.file)
            self._changes += 1
            self._maintain()
        return item

    def _maintain(self) -> None:
        """After writes: rebuild when the index type no longer fits, else snapshot when due."""
        vectors = self._vectors
        if vectors is None:
            return
        if vectors.ntotal >= self._retry_rebuild_at and self._wants_rebuild(vectors):
            try:
                self._rebuild_locked(None)
            except Exception:
                log.exception("rebuilding the vector index failed; keeping the current one")
                self._retry_rebuild_at = self._grown(vectors.ntotal)
        elif self._changes >= self.snapshot_every:
            self._snapshot_quietly()

    def _grown(self, count: int) -> int:
        """The count past which a failed rebuild is worth another try."""
        return int(count * (1 + self.thresholds.hysteresis)) + 1

    def _recover(self) -> None:
        try:
            self._rebuild_locked(None)
        except Exception:
            log.exception("vector index rebuild failed; searches answer IndexNotReady")
            self._vectors = None

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Write the FAISS snapshot now.

        Raises IndexNotReady when there is no usable index or the store is closed,
        StorageFull when the disk is full, OSError for other I/O failures.
        """
        with self._write_lock:
            self._check_open()
            self._snapshot_locked()

    def _snapshot_locked(self) -> None:
        if self._vectors is None:
            raise IndexNotReady("vector index unavailable")
        self._vectors.save(self._snapshot_path, self.model_name)
        self._snapshot_max_id = self._vectors.max_id
        self._changes = 0

    def _snapshot_quietly(self) -> None:
        # A failed snapshot loses nothing: the catalog replays it on the next start.
        try:
            self._snapshot_locked()
        except (OSError, StoreError) as exc:
            log.warning("vector snapshot failed (the catalog still has every row): %s", exc)

    def rebuild(self, factory: str | None = None) -> None:
        """Rebuild the vector index from the catalog (``factory`` overrides the choice once);
        searches keep using the old index until the new one is swapped in.

        Raises ValueError for a factory FAISS cannot build, IndexNotReady when closed.
        """
        with self._write_lock:
            self._check_open()
            self._rebuild_locked(factory)

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
        vectors = self._vectors
        if vectors is None:
            raise IndexNotReady("vector index unavailable")
        if k < 1:
            raise ValueError("k must be at least 1")
        matrix = as_matrix(query_vecs, self.dim)
        wanted = clean_tags(tags)
        if not wanted:
            return vectors.search(matrix, k, block=set(exclude_ids))
        allow = self._catalog.ids_with_tags(wanted).difference(exclude_ids)
        if len(allow) <= self.thresholds.exact_filter_max:
            return self._exact_search(matrix, k, allow)
        return vectors.search(matrix, k, allow=allow)

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

    def _exact_search(
        self, matrix: npt.NDArray[np.float32], k: int, allow: Collection[int]
    ) -> builtins.list[Hits]:
        """Score a small candidate set exactly from the catalog's vectors."""
        ids, vecs = self._catalog.embeddings_for(allow)
        if ids.size == 0:
            return [[] for _ in range(matrix.shape[0])]
        scores = matrix @ vecs.T
        top = min(k, ids.size)
        hits: builtins.list[Hits] = []
        for row in scores:
            best = np.argpartition(-row, top - 1)[:top]
            best = best[np.argsort(-row[best], kind="stable")]
            hits.append([(int(ids[i]), float(row[i])) for i in best])
        return hits

    def stats(self) -> dict[str, Any]:
        """count (catalog rows), vectors (searchable), factory, dim, snapshot_max_id (None
        before the first snapshot), model, tombstones. Raises IndexNotReady when closed."""
        self._check_open()
        vectors = self._vectors
        return {
            "count": self._catalog.count(),
            "vectors": vectors.ntotal if vectors is not None else 0,
            "factory": vectors.factory if vectors is not None else None,
            "dim": self.dim,
            "snapshot_max_id": self._snapshot_max_id,
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
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._changes and self._vectors is not None:
                    self._snapshot_quietly()
            finally:
                self._catalog.close()
                self._lock.release()

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
