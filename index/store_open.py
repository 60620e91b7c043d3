"""Opening a data dir for a ``Store``: the folders, the hold on the data dir, the catalog, the
start-up cleanup (only when no other process holds the data dir) and the vector copy brought up
to date. ``Store.open`` validates its arguments, calls ``open_parts`` and starts following."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from index.catalog_factory import CatalogBackend, open_catalog
from index.choice import Thresholds
from index.files import FileStore
from index.store_sharing import DataDirAccess
from index.store_startup import clean_files
from index.vector_copy import VectorCopy

__all__ = ["CATALOG_NAME", "FILES_DIR", "INDEX_DIR", "SNAPSHOT_NAME", "Parts", "open_parts"]

CATALOG_NAME = "catalog.sqlite3"
FILES_DIR = "files"
INDEX_DIR = "index"
SNAPSHOT_NAME = "vectors.faiss"


@dataclass(frozen=True)
class Parts:
    """What a ``Store`` is made of, opened and up to date."""

    catalog: CatalogBackend
    files: FileStore
    access: DataDirAccess
    copy: VectorCopy


def open_parts(
    data_dir: Path,
    dim: int,
    model_name: str,
    factory: str,
    budget: int,
    snapshot_every: int,
    thresholds: Thresholds,
    shared: bool,
    database_url: str | None,
    files_dir: Path | None,
) -> Parts:
    """Open the data dir's parts (see ``Store.open``); on any error, close what was opened.

    Raises DimensionMismatch or ModelMismatch, DataDirLocked, StoreError, CatalogUnavailable
    as ``Store.open`` documents.
    """
    files_path = Path(files_dir) if files_dir is not None else data_dir / FILES_DIR
    for folder in (data_dir, files_path, data_dir / INDEX_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    access = DataDirAccess(data_dir, data_dir / INDEX_DIR, shared)
    catalog: CatalogBackend | None = None
    try:
        catalog = open_catalog(database_url or data_dir / CATALOG_NAME)
        catalog.check_model(model_name, dim)
        files = FileStore(files_path)
        # nobody can be between writing a file and committing its row; files kept apart
        # from the data dir may be other replicas' (their orphans stay: see docs/scaling.md)
        if access.alone and files_dir is None:
            clean_files(files, catalog, data_dir / INDEX_DIR)
        access.cleaned_up()
        copy = VectorCopy(catalog, data_dir / INDEX_DIR / SNAPSHOT_NAME, dim, model_name,
                          factory, budget, snapshot_every, thresholds, access.snapshot_lock)
        copy.load()  # no lock needed: nothing else holds this copy yet
    except BaseException:
        access.close()
        if catalog is not None:
            catalog.close()
        raise
    return Parts(catalog, files, access, copy)
