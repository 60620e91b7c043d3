"""Connections of the PostgreSQL catalog: the pool, psycopg's errors as the catalog's domain
errors, and the LISTEN connection that wakes a follower when another process writes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from index.catalog_pg_schema import NOTIFY
from index.errors import CatalogUnavailable, DuplicateContent, StorageFull, StoreError

__all__ = ["Listener", "domain_errors", "open_pool", "where"]


def where(url: str) -> str:
    """host:port/db of a URL, without user or password (for messages)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the database"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _configure(conn: psycopg.Connection) -> None:
    # Reads see one snapshot per transaction, as SQLite's read transactions do; writes set
    # READ COMMITTED themselves (a delete racing another then finds the row gone instead of
    # failing to serialize).
    conn.execute("SET default_transaction_isolation = 'repeatable read'")


def open_pool(url: str, size: int, timeout_s: float) -> ConnectionPool:
    """An open pool of autocommit connections (transactions are explicit), each checked before
    it is handed out, so one broken by a server restart is replaced rather than used; it keeps
    reconnecting while the server is down.

    Raises CatalogUnavailable when no connection is made within ``timeout_s``.
    """
    pool = ConnectionPool(
        url, min_size=1, max_size=size, timeout=timeout_s, open=False,
        kwargs={"autocommit": True, "connect_timeout": max(2, round(timeout_s))},
        configure=_configure, check=ConnectionPool.check_connection,
        name="fusion-catalog", reconnect_timeout=24 * 3600,
    )
    try:
        pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout as exc:
        pool.close()
        raise CatalogUnavailable(f"cannot connect to {where(url)}") from exc
    return pool


@contextmanager
def domain_errors(place: str) -> Iterator[None]:
    """psycopg's errors as the catalog's: a unique sha256 violated -> DuplicateContent, no
    space -> StorageFull, a lost or refused connection -> CatalogUnavailable."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise DuplicateContent(f"already stored: {exc.diag.message_detail}") from exc
    except (psycopg.errors.DiskFull, psycopg.errors.OutOfMemory) as exc:
        raise StorageFull(f"the database {place} is out of space") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
        raise CatalogUnavailable(f"the database {place} is unavailable: {exc}") from exc
    except PoolClosed as exc:
        raise StoreError("the catalog is closed") from exc


class Listener:
    """One connection that LISTENs on the change channel, (re)made on demand."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def wait(self, timeout: float) -> bool:
        """True once a NOTIFY arrives, False after ``timeout`` seconds.

        Raises CatalogUnavailable when the server cannot be reached.
        """
        with self._lock, domain_errors(where(self.url)):
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self.url, autocommit=True,
                                             connect_timeout=max(2, round(timeout)))
                self._conn.execute(f"LISTEN {NOTIFY}")
            try:
                for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                    return True
                return False
            except BaseException:
                self._conn.close()
                self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
