"""The SQLite catalog: one row per image, the source of truth every other structure derives from.

WAL mode lets readers run while one writer commits; ``synchronous=FULL`` makes a returned commit
survive power loss. Writes go through one connection behind a lock; reads borrow a connection
from a small pool so threads never share one.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt

from index import catalog_changes, fulltext
from index import catalog_reads as reads
from index.catalog_changes import Change
from index.catalog_schema import SCHEMA, Item, NewItem
from index.catalog_writes import delete_item, insert_items, record_model
from index.errors import ItemNotFound, StorageFull, StoreError

__all__ = ["Catalog", "Change", "Item", "NewItem"]

log = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS = 10_000
_POOL_SIZE = 8


def _is_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    )


_TAG_CACHE_SETS = 64  # tag sets whose ids are kept between writes
_TAG_CACHE_IDS = 1_000_000  # larger id sets are read each time


class Catalog:
    """SQLite-backed item catalog. Safe to use from many threads at once."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the catalog at ``path``.

        Raises StoreError when the file is not a usable SQLite database.
        """
        self.path = path
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._closed = False
        # ids per tag set, valid while no write has happened since (``_generation``)
        self._generation = 0
        self._tag_ids: dict[tuple[str, ...], tuple[int, frozenset[int]]] = {}
        try:
            self._writer = self._connect()
            mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"could not switch {path} to WAL mode (got {mode})")
            self._writer.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the catalog {path}: {exc}") from exc

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # explicit BEGIN/COMMIT only
            check_same_thread=False,  # pooled: used by one thread at a time, not always the same
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the catalog is closed")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection inside one read transaction (a consistent snapshot)."""
        self._check_open()
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            self._release(conn)

    def _release(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn.close()
            return
        with self._pool_lock:
            if not self._closed and self._idle.qsize() < _POOL_SIZE:
                self._idle.put(conn)
                return
        conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside one IMMEDIATE transaction, committed on success.

        Raises StorageFull when SQLite reports a full disk; the transaction is rolled back.
        """
        with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if _is_full(exc):
                    raise StorageFull("no space left to write the catalog") from exc
                raise
            finally:  # after the commit: a reader that began before it cannot cache its result
                self._generation += 1
                self._tag_ids.clear()

    def _migrate(self) -> None:
        """Add what a catalog written by an older version lacks (the full-text index, then the
        change log), each created and filled from the rows already there in one transaction (a
        crash leaves the old schema, retried next open)."""
        for part in (fulltext, catalog_changes):
            if part.exists(self._writer):  # the usual case: no write lock for a look
                continue
            with self._write() as conn:
                if not part.exists(conn):  # created by another process meanwhile
                    filled = part.create_and_fill(conn)
                    log.info("created %s over %d existing rows", part.TABLE, filled)

    # -- model -------------------------------------------------------------------------------

    def check_model(self, name: str, dim: int) -> None:
        """Record the model on first use; afterwards refuse another model's dimension or name.

        An empty catalog adopts the new model. Raises DimensionMismatch when the stored
        dimension differs, ModelMismatch when only the model name differs.
        """
        with self._write() as conn:
            record_model(conn, name, dim)

    # -- writes ------------------------------------------------------------------------------

    def add(self, new: NewItem) -> Item:
        """Insert one row in its own transaction.

        Raises sqlite3.IntegrityError for a sha256 already stored, StorageFull on a full disk.
        """
        return self.add_many([new])[0]

    def add_many(self, news: Sequence[NewItem]) -> list[Item]:
        """Insert rows in one transaction: all are stored or none.

        Raises sqlite3.IntegrityError for a sha256 already stored, StorageFull on a full disk.
        """
        created = time.time()
        with self._write() as conn:
            return insert_items(conn, news, created)

    def delete(self, item_id: int) -> Item:
        """Delete a row (and its tags) and return what it held.

        Raises ItemNotFound when there is no such row, StorageFull on a full disk.
        """
        with self._write() as conn:
            return delete_item(conn, item_id, time.time())

    # -- reads -------------------------------------------------------------------------------

    def get(self, item_id: int) -> Item:
        """The row with this id. Raises ItemNotFound."""
        with self._read() as conn:
            item = reads.item_by_id(conn, item_id)
        if item is None:
            raise ItemNotFound(item_id)
        return item

    def get_by_sha(self, sha256: str) -> Item | None:
        """The row holding this content digest, or None."""
        with self._read() as conn:
            return reads.item_by_sha(conn, sha256)

    def get_many(self, ids: Iterable[int]) -> dict[int, Item]:
        """Rows by id; ids with no row are simply absent from the result."""
        wanted = sorted({int(i) for i in ids})
        with self._read() as conn:
            return reads.items_by_ids(conn, wanted)

    def list(
        self, offset: int = 0, limit: int = 50, tag: str | None = None
    ) -> tuple[list[Item], int]:
        """One page of rows, newest (highest id) first, and the total matching count.

        Raises ValueError for a negative offset or limit.
        """
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must not be negative")
        with self._read() as conn:
            return reads.page(conn, offset, limit, tag)

    def keyword_search(
        self, query: str, limit: int, tags: Sequence[str] = (), syntax: str = "terms"
    ) -> builtins.list[tuple[int, float]]:
        """(id, BM25 relevance, higher is better) of rows whose caption, tags or original file
        name match ``query``, best first, at most ``limit``; only rows carrying every one of
        ``tags``.

        ``syntax="terms"`` (the default) reads the query as plain words: each one is matched as
        a quoted phrase (so ``IMG_2041`` matches the file name ``IMG_2041.jpg``, and quotes,
        ``AND``, ``*`` or ``NEAR(`` are just text), and a row matches when any word does.
        ``syntax="fts5"`` passes the query to SQLite FTS5 as written (AND/OR/NOT, prefix*,
        "phrases", NEAR, column filters).

        Raises BadQuery for an FTS5 query that does not parse or an unknown syntax, ValueError
        for a negative limit.
        """
        expression = fulltext.expression(query, syntax)
        if expression is None:
            return []
        with self._read() as conn:
            return fulltext.search(conn, expression, limit, tags)

    def count(self) -> int:
        """Number of rows."""
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def max_id(self) -> int:
        """Highest row id present (0 when empty)."""
        with self._read() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()[0])

    def ids(self) -> npt.NDArray[np.int64]:
        """Every row id, ascending."""
        with self._read() as conn:
            rows = conn.execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def file_referenced(self, file: str) -> bool:
        """True when some row points at this stored file name."""
        with self._read() as conn:
            row = conn.execute("SELECT 1 FROM items WHERE file = ? LIMIT 1", (file,)).fetchone()
        return row is not None

    def all_files(self) -> set[str]:
        """Every stored file name some row points at."""
        with self._read() as conn:
            return {r[0] for r in conn.execute("SELECT DISTINCT file FROM items")}

    def ids_with_tags(self, tags: Sequence[str]) -> frozenset[int]:
        """Ids of the rows carrying every one of ``tags`` (all rows' ids for no tags).

        Kept until the next write: a tag filtered on again (the page's tag box, a client's
        fixed filter) costs a dict lookup instead of reading thousands of ids from SQLite.
        """
        wanted = tuple(sorted(set(tags)))
        generation = self._generation
        cached = self._tag_ids.get(wanted)
        if cached is not None and cached[0] == generation:
            return cached[1]
        with self._read() as conn:
            ids = reads.tagged_ids(conn, wanted)
        if wanted and len(ids) <= _TAG_CACHE_IDS and self._generation == generation:
            if len(self._tag_ids) >= _TAG_CACHE_SETS:
                self._tag_ids.clear()
            self._tag_ids[wanted] = (generation, ids)
        return ids

    def embeddings(
        self, after_id: int = 0, batch: int = 10_000
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Yield (ids, vectors (n, D) float32) for rows with id > ``after_id``, ascending.

        Each batch is its own read, so a long scan does not hold one snapshot open; callers
        that need a frozen set of rows hold the writers off themselves.
        """
        last = after_id
        while True:
            with self._read() as conn:
                rows = reads.embedding_rows_after(conn, last, batch)
            if not rows:
                return
            yield reads.stack_embeddings(rows)
            last = rows[-1][0]

    def embeddings_for(
        self, ids: Iterable[int]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(ids, vectors) of the given rows, ascending by id; ids with no row are left out."""
        wanted = sorted({int(i) for i in ids})
        with self._read() as conn:
            rows = reads.embedding_rows(conn, wanted)
        return reads.stack_embeddings(rows)

    def tokens(self, ids: Sequence[int]) -> npt.NDArray[np.float16]:
        """Patch tokens (n, T, W) float16 of the given rows, in the order given.

        Raises ItemNotFound for an id with no row, TokensUnavailable for a row stored without
        tokens or with tokens of another shape than the first row's.
        """
        wanted = [int(i) for i in ids]
        with self._read() as conn:
            found = reads.token_blobs(conn, wanted)
        return reads.stack_tokens(wanted, found)

    # -- change log --------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The sequence number of the latest insert or delete (0 when nothing was written)."""
        with self._read() as conn:
            return catalog_changes.last_seq(conn)

    def changes_since(self, seq: int, limit: int = 10_000) -> builtins.list[Change]:
        """At most ``limit`` inserts and deletes logged after ``seq``, in ``seq`` order.

        Raises ValueError for a negative ``seq`` or a ``limit`` below 1.
        """
        if seq < 0 or limit < 1:
            raise ValueError("seq must not be negative and limit must be at least 1")
        with self._read() as conn:
            changes = catalog_changes.since(conn, seq, limit)
        if changes:  # maybe another process's writes: cached tag ids may be stale
            with self._write_lock:
                self._generation += 1
                self._tag_ids.clear()
        return changes

    # -- maintenance -------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result: "ok", or the problems found.

        A file too damaged to be checked is a problem found, not an error: the answer is
        SQLite's message.
        """
        with self._read() as conn:
            try:
                return "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
            except sqlite3.DatabaseError as exc:
                return f"unreadable: {exc}"

    def backup(self, dest_path: Path) -> None:
        """Copy a consistent snapshot of the catalog to ``dest_path`` while it stays in use.

        Raises StoreError when the copy fails.
        """
        self._check_open()
        try:
            with contextlib.closing(sqlite3.connect(dest_path)) as dest:
                with contextlib.closing(self._connect()) as src:
                    src.backup(dest)
        except sqlite3.Error as exc:
            raise StoreError(f"backup to {dest_path} failed: {exc}") from exc

    def close(self) -> None:
        """Close every connection; later calls raise StoreError. Idempotent."""
        with self._write_lock:
            if self._closed:
                return
            with self._pool_lock:
                self._closed = True
            self._writer.close()
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
