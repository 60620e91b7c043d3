"""Domain errors raised by the index package; app/errors.py maps them to HTTP statuses."""

from __future__ import annotations

import sqlite3


class StoreError(Exception):
    """Base class of every error the index package raises on purpose."""


class ItemNotFound(StoreError, LookupError):
    """No catalog row has this id (HTTP 404)."""

    def __init__(self, item_id: int) -> None:
        super().__init__(f"item {item_id} not found")
        self.item_id = item_id


class StorageFull(StoreError):
    """The disk (or the user's quota) is full; nothing was stored (HTTP 507)."""


class ModelMismatch(StoreError):
    """The data dir was written by another model than the one now loaded."""

    def __init__(self, message: str, *, stored: str, current: str) -> None:
        super().__init__(message)
        self.stored = stored
        self.current = current


class DimensionMismatch(ModelMismatch):
    """Stored vectors (or a vector passed in) have another dimension than the model's."""

    def __init__(self, stored_dim: int, model_dim: int, *, message: str | None = None) -> None:
        super().__init__(
            message
            or (
                f"the data dir holds {stored_dim}-dimensional embeddings but the model produces "
                f"{model_dim}-dimensional ones; re-embed the collection with this model "
                "(ingest the images again into a new data dir) or point the service at a new, "
                "empty data dir"
            ),
            stored=str(stored_dim),
            current=str(model_dim),
        )
        self.stored_dim = stored_dim
        self.model_dim = model_dim


class IndexNotReady(StoreError):
    """The vector index is not available (store closed, or being rebuilt after a failure)."""


class TokensUnavailable(StoreError):
    """An item has no stored patch tokens, or its tokens have another shape than the others."""

    def __init__(self, item_id: int, reason: str) -> None:
        super().__init__(f"tokens of item {item_id} unavailable: {reason}")
        self.item_id = item_id


class BadQuery(StoreError, ValueError):
    """A keyword query that cannot be run as written (HTTP 400)."""


class DataDirLocked(StoreError):
    """Another process already serves this data dir."""


class CatalogUnavailable(StoreError):
    """The catalog's database server cannot be reached (connection lost, server restarting,
    no free connection in time). Retry later (HTTP 503, Retry-After): a write cut off before
    its commit left nothing; one cut off during its commit may have landed, and its retry then
    finds the item (a duplicate upload)."""

    retry_after_s = 2


class DuplicateContent(StoreError, sqlite3.IntegrityError):
    """A row with this sha256 is already stored (another writer won the race); nothing of the
    batch was written. A sqlite3.IntegrityError too, as the SQLite catalog raises for the same
    case, so callers catch one type whichever backend holds the catalog."""
