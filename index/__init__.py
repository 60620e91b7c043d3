"""Storage and search without torch: SQLite catalog, FAISS vectors, content-addressed files."""

from index.catalog import Item
from index.choice import Thresholds, choose_factory, needs_rebuild, parse_bytes, search_params
from index.errors import (
    BadQuery,
    CatalogUnavailable,
    DataDirLocked,
    DimensionMismatch,
    DuplicateContent,
    IndexNotReady,
    ItemNotFound,
    ModelMismatch,
    StorageFull,
    StoreError,
    TokensUnavailable,
)
from index.store import Store, Upload

__all__ = [
    "BadQuery",
    "CatalogUnavailable",
    "DataDirLocked",
    "DimensionMismatch",
    "DuplicateContent",
    "IndexNotReady",
    "Item",
    "ItemNotFound",
    "ModelMismatch",
    "StorageFull",
    "Store",
    "StoreError",
    "Thresholds",
    "TokensUnavailable",
    "Upload",
    "choose_factory",
    "needs_rebuild",
    "parse_bytes",
    "search_params",
]
