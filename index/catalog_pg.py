"""The PostgreSQL catalog: the SQLite catalog's interface (index/catalog.py) over a database
server that several serving processes, on one machine or several, share.

One module of SQL over psycopg 3 and its connection pool rather than SQLAlchemy Core: the two
backends differ in the places that matter (full text: FTS5 against tsvector; the change log's
ordering: one SQLite writer against an advisory lock; the schema's migration; bytea; identity
columns) and share the rest through index/catalog_schema.py (``Item``, ``item_from_row``) and
index/catalog_reads.py (blobs to arrays). The dialect differences are named in
index/catalog_pg_schema.py and index/catalog_pg_text.py.

Acknowledged means committed: a write returns after PostgreSQL's COMMIT (``synchronous_commit``
as the server sets it, ``on`` by default). Every insert and delete appends to ``changes`` in the
same transaction, holding CHANGES_LOCK from its sequence numbers to its commit, and sends
``NOTIFY fusion_changes`` with the last seq, which ``wait_for_change`` listens for. A lost or
refused connection raises CatalogUnavailable; the pool replaces broken connections, so the
catalog recovers without being reopened once the server is back.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psycopg

from index import catalog_pg_text as text
from index import catalog_pg_writes as writes
from index.catalog_changes import Change
from index.catalog_pg_backup import export_sqlite
from index.catalog_pg_conn import Listener, domain_errors, open_pool, where
from index.catalog_pg_schema import ITEM_COLUMNS, migrate
from index.catalog_reads import stack_embeddings, stack_tokens
from index.catalog_schema import Item, NewItem, item_from_row
from index.errors import ItemNotFound, StoreError

__all__ = ["PgCatalog"]

log = logging.getLogger(__name__)

_POOL_SIZE = 8
_TIMEOUT_S = 5.0


class PgCatalog:
    """PostgreSQL-backed item catalog with the SQLite catalog's methods. Thread-safe."""

    def __init__(self, url: str, pool_size: int = _POOL_SIZE,
                 timeout_s: float = _TIMEOUT_S) -> None:
        """Connect to ``url`` and create or migrate the schema.

        Raises CatalogUnavailable when the server cannot be reached within ``timeout_s``,
        StoreError when the schema cannot be created.
        """
        self.url = url
        self.where = where(url)
        self._closed = False
        self._tag_ids: dict[tuple[str, ...], tuple[int, frozenset[int]]] = {}
        self._tag_lock = threading.Lock()
        self._listener = Listener(url)
        self._pool = open_pool(url, pool_size, timeout_s)
        try:
            with self._write() as conn:
                migrate(conn, self.where)
        except BaseException:
            self._pool.close()
            raise

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        """A pooled connection in autocommit: each statement its own snapshot."""
        if self._closed:
            raise StoreError("the catalog is closed")
        with domain_errors(self.where), self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one repeatable-read transaction (one snapshot)."""
        with self._conn() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one read-committed transaction, committed on success."""
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            yield conn

    # -- model -------------------------------------------------------------------------------

    def check_model(self, name: str, dim: int) -> None:
        """Record the model on first use; afterwards refuse another model's dimension or name.

        An empty catalog adopts the new model. Raises DimensionMismatch when the stored
        dimension differs, ModelMismatch when only the model name differs.
        """
        with self._write() as conn:
            writes.record_model(conn, name, dim)

    # -- writes ------------------------------------------------------------------------------

    def add(self, new: NewItem) -> Item:
        """Insert one row in its own transaction.

        Raises DuplicateContent for a sha256 already stored, StorageFull when the database is
        out of space, CatalogUnavailable when it cannot be reached.
        """
        return self.add_many([new])[0]

    def add_many(self, news: Sequence[NewItem]) -> list[Item]:
        """Insert rows in one transaction: all are stored or none.

        Raises DuplicateContent for a sha256 already stored (also a sqlite3.IntegrityError, as
        the SQLite catalog raises), StorageFull, CatalogUnavailable.
        """
        if not news:
            return []
        created = time.time()
        with self._write() as conn:
            return writes.insert_items(conn, news, created)

    def delete(self, item_id: int) -> Item:
        """Delete a row (and its tags) and return what it held.

        Raises ItemNotFound when there is no such row, CatalogUnavailable.
        """
        with self._write() as conn:
            return writes.delete_item(conn, item_id)

    # -- reads -------------------------------------------------------------------------------

    def get(self, item_id: int) -> Item:
        """The row with this id. Raises ItemNotFound, CatalogUnavailable."""
        with self._conn() as conn:
            row = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s",
                               (item_id,)).fetchone()
        if row is None:
            raise ItemNotFound(item_id)
        return item_from_row(row)

    def get_by_sha(self, sha256: str) -> Item | None:
        """The row holding this content digest, or None."""
        with self._conn() as conn:
            row = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE sha256 = %s",
                               (sha256,)).fetchone()
        return None if row is None else item_from_row(row)

    def get_many(self, ids: Iterable[int]) -> dict[int, Item]:
        """Rows by id; ids with no row are simply absent from the result."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = ANY(%s)",
                                (wanted,)).fetchall()
        return {item.id: item for item in map(item_from_row, rows)}

    def list(
        self, offset: int = 0, limit: int = 50, tag: str | None = None
    ) -> tuple[builtins.list[Item], int]:
        """One page of rows, newest (highest id) first, and the total matching count.

        Raises ValueError for a negative offset or limit.
        """
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must not be negative")
        cond, args = "", tuple[str, ...]()
        if tag is not None:
            cond, args = "WHERE id IN (SELECT item_id FROM item_tags WHERE tag = %s)", (tag,)
        with self._read() as conn:
            total = conn.execute(f"SELECT COUNT(*) FROM items {cond}", args).fetchone()
            rows = conn.execute(
                f"SELECT {ITEM_COLUMNS} FROM items {cond} ORDER BY id DESC LIMIT %s OFFSET %s",
                (*args, limit, offset),
            ).fetchall()
        return [item_from_row(r) for r in rows], int(total[0] if total else 0)

    def keyword_search(
        self, query: str, limit: int, tags: Sequence[str] = (), syntax: str = "terms"
    ) -> builtins.list[tuple[int, float]]:
        """(id, relevance, higher is better) of rows whose caption, tags or original file name
        match ``query``, best first, at most ``limit``; only rows carrying every one of
        ``tags``. The SQLite catalog's "terms" semantics (index/catalog_pg_text.py says where
        they differ: ts_rank, not BM25; no raw FTS5 syntax).

        Raises BadQuery for ``syntax="fts5"`` or an unknown syntax, ValueError for limit < 0.
        """
        found = text.phrases(query, syntax)
        if limit < 0:
            raise ValueError("limit must not be negative")
        with self._read() as conn:
            return text.search(conn, found, limit, tags)

    def count(self) -> int:
        """Number of rows."""
        return self._scalar("SELECT COUNT(*) FROM items")

    def max_id(self) -> int:
        """Highest row id present (0 when empty)."""
        return self._scalar("SELECT COALESCE(MAX(id), 0) FROM items")

    def _scalar(self, sql: str) -> int:
        with self._conn() as conn:
            row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0

    def ids(self) -> npt.NDArray[np.int64]:
        """Every row id, ascending."""
        with self._conn() as conn:
            rows = conn.execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def file_referenced(self, file: str) -> bool:
        """True when some row points at this stored file name."""
        with self._conn() as conn:
            row = conn.execute("SELECT 1 FROM items WHERE file = %s LIMIT 1", (file,)).fetchone()
        return row is not None

    def all_files(self) -> set[str]:
        """Every stored file name some row points at."""
        with self._conn() as conn:
            return {r[0] for r in conn.execute("SELECT DISTINCT file FROM items")}

    def ids_with_tags(self, tags: Sequence[str]) -> frozenset[int]:
        """Ids of the rows carrying every one of ``tags`` (all rows' ids for no tags).

        A tag set's ids are kept while the change log has not moved (any process's insert or
        delete moves it), so a repeated filter costs one small query.
        """
        wanted = tuple(sorted(set(tags)))
        with self._read() as conn:
            seq_row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
            seq = int(seq_row[0]) if seq_row else 0
            with self._tag_lock:
                cached = self._tag_ids.get(wanted)
            if cached is not None and cached[0] == seq:
                return cached[1]
            if not wanted:
                rows = conn.execute("SELECT id FROM items").fetchall()
            else:
                rows = conn.execute(
                    "SELECT item_id FROM item_tags WHERE tag = ANY(%s)"
                    " GROUP BY item_id HAVING COUNT(*) = %s",
                    (list(wanted), len(wanted)),
                ).fetchall()
        ids = frozenset(int(r[0]) for r in rows)
        if wanted:
            with self._tag_lock:
                if len(self._tag_ids) >= 64:
                    self._tag_ids.clear()
                self._tag_ids[wanted] = (seq, ids)
        return ids

    def embeddings(
        self, after_id: int = 0, batch: int = 10_000
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Yield (ids, vectors (n, D) float32) for rows with id > ``after_id``, ascending, one
        read per batch."""
        last = after_id
        while True:
            with self._conn() as conn:
                rows = conn.execute(
                    "SELECT id, embedding FROM items WHERE id > %s ORDER BY id LIMIT %s",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            yield stack_embeddings(rows)
            last = rows[-1][0]

    def embeddings_for(
        self, ids: Iterable[int]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(ids, vectors) of the given rows, ascending by id; ids with no row are left out."""
        wanted = sorted({int(i) for i in ids})
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, embedding FROM items WHERE id = ANY(%s) ORDER BY id", (wanted,)
            ).fetchall()
        return stack_embeddings(rows)

    def tokens(self, ids: Sequence[int]) -> npt.NDArray[np.float16]:
        """Patch tokens (n, T, W) float16 of the given rows, in the order given.

        Raises ItemNotFound for an id with no row, TokensUnavailable for a row stored without
        tokens or with tokens of another shape than the first row's.
        """
        wanted = [int(i) for i in ids]
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, tokens, tokens_shape FROM items WHERE id = ANY(%s)",
                (sorted(set(wanted)),),
            ).fetchall()
        return stack_tokens(wanted, {r[0]: (r[1], r[2]) for r in rows})

    # -- change log --------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The sequence number of the latest insert or delete (0 when nothing was written)."""
        return self._scalar("SELECT COALESCE(MAX(seq), 0) FROM changes")

    def changes_since(self, seq: int, limit: int = 10_000) -> builtins.list[Change]:
        """At most ``limit`` inserts and deletes logged after ``seq``, in ``seq`` order.

        Raises ValueError for a negative ``seq`` or a ``limit`` below 1.
        """
        if seq < 0 or limit < 1:
            raise ValueError("seq must not be negative and limit must be at least 1")
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT seq, item_id, op FROM changes WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, limit),
            ).fetchall()
        return [Change(int(s), int(i), op) for s, i, op in rows]

    def wait_for_change(self, timeout: float) -> bool:
        """Block until some process commits an insert or delete (True) or ``timeout`` seconds
        pass (False), by LISTEN on the changes channel; a follower calls ``changes_since``
        after either (NOTIFY is a wake-up, the log is the truth).

        Raises CatalogUnavailable when the server cannot be reached (the caller polls).
        """
        return self._listener.wait(timeout)

    # -- maintenance -------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """"ok", or the problems found: items the change log does not hold (no ``add``, or a
        ``delete`` as their last change), which followers would miss. (PostgreSQL checks its
        own pages; there is no ``PRAGMA integrity_check`` to run.)"""
        problems = []
        with self._read() as conn:
            unlogged = conn.execute(
                "SELECT count(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM changes c"
                " WHERE c.item_id = i.id AND c.op = 'add')"
            ).fetchone()
            if unlogged and unlogged[0]:
                problems.append(f"{unlogged[0]} items have no 'add' in the change log")
            ghosts = conn.execute(
                "SELECT count(*) FROM items i WHERE (SELECT op FROM changes c WHERE"
                " c.item_id = i.id ORDER BY seq DESC LIMIT 1) = 'delete'"
            ).fetchone()
            if ghosts and ghosts[0]:
                problems.append(f"{ghosts[0]} items are deleted in the change log")
        return "\n".join(problems) or "ok"

    def backup(self, dest_path: Path) -> None:
        """Write a consistent snapshot of the catalog to ``dest_path`` as a SQLite catalog
        (same ids, rows, tags and model record): a data dir's catalog file, servable without
        PostgreSQL. Raises StoreError when the copy fails."""
        with self._read() as conn:
            export_sqlite(conn, Path(dest_path))

    def close(self) -> None:
        """Close every connection; later calls raise StoreError. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._listener.close()
        self._pool.close()
