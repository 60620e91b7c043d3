"""The one place that chooses the catalog's backend: a ``postgresql://`` URL opens the
PostgreSQL catalog (index/catalog_pg.py, needs the ``postgres`` extra), a path the SQLite one.

``CatalogBackend`` is the interface both implement, for code that holds either.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from index.catalog import Catalog
from index.catalog_changes import Change
from index.catalog_schema import Item, NewItem
from index.errors import StoreError

__all__ = ["CatalogBackend", "is_postgres_url", "open_catalog"]


def is_postgres_url(target: object) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_catalog(target: str | Path) -> CatalogBackend:
    """Open the catalog ``target`` names: a PostgreSQL URL or a SQLite file path.

    Raises StoreError when the catalog cannot be opened (also when the URL names PostgreSQL
    and psycopg is not installed), CatalogUnavailable when the database server cannot be
    reached.
    """
    if is_postgres_url(target):
        try:
            from index.catalog_pg import PgCatalog
        except ImportError as exc:
            raise StoreError(
                "FUSION_DATABASE_URL names a PostgreSQL database, but psycopg is not installed: "
                "pip install 'fusion-search[postgres]'"
            ) from exc
        return PgCatalog(str(target))
    return Catalog(Path(target))


class CatalogBackend(Protocol):
    """The public interface of index.catalog.Catalog and index.catalog_pg.PgCatalog."""

    def check_model(self, name: str, dim: int) -> None: ...
    def add(self, new: NewItem) -> Item: ...
    def add_many(self, news: Sequence[NewItem]) -> builtins.list[Item]: ...
    def delete(self, item_id: int) -> Item: ...
    def get(self, item_id: int) -> Item: ...
    def get_by_sha(self, sha256: str) -> Item | None: ...
    def get_many(self, ids: Iterable[int]) -> dict[int, Item]: ...
    def list(
        self, offset: int = 0, limit: int = 50, tag: str | None = None
    ) -> tuple[builtins.list[Item], int]: ...
    def keyword_search(
        self, query: str, limit: int, tags: Sequence[str] = (), syntax: str = "terms"
    ) -> builtins.list[tuple[int, float]]: ...
    def count(self) -> int: ...
    def max_id(self) -> int: ...
    def ids(self) -> npt.NDArray[np.int64]: ...
    def file_referenced(self, file: str) -> bool: ...
    def all_files(self) -> set[str]: ...
    def ids_with_tags(self, tags: Sequence[str]) -> frozenset[int]: ...
    def embeddings(
        self, after_id: int = 0, batch: int = 10_000
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]: ...
    def embeddings_for(
        self, ids: Iterable[int]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def tokens(self, ids: Sequence[int]) -> npt.NDArray[np.float16]: ...
    def last_seq(self) -> int: ...
    def changes_since(self, seq: int, limit: int = 10_000) -> builtins.list[Change]: ...
    def integrity_check(self) -> str: ...
    def backup(self, dest_path: Path) -> None: ...
    def close(self) -> None: ...



if TYPE_CHECKING:  # mypy checks here that both backends implement the interface
    from index.catalog_pg import PgCatalog

    def _conforms(sqlite: Catalog, pg: PgCatalog) -> tuple[CatalogBackend, CatalogBackend]:
        return sqlite, pg
