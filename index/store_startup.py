"""What opening a data dir repairs: files left by writes that never committed, and a vector
snapshot older (or newer) than the catalog it mirrors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from index.atomic import remove_temps
from index.catalog_factory import CatalogBackend
from index.files import FileStore
from index.vectors import VectorIndex

__all__ = ["clean_files", "reconcile"]

# Logged under the store's name, as before these steps moved out of index/store.py.
log = logging.getLogger("index.store")

_REPLAY_CHUNK = 10_000


def clean_files(files: FileStore, catalog: CatalogBackend, index_dir: Path) -> None:
    """Remove temp files and files no row references (uploads never acknowledged)."""
    stale = files.remove_stale_temps() + remove_temps(index_dir)
    referenced = catalog.all_files()
    orphans = [name for name in files.list_names() if name not in referenced]
    for name in orphans:
        files.delete(name)
    if stale or orphans:
        log.info("removed %d temp files and %d orphan files", stale, len(orphans))


def reconcile(vectors: VectorIndex, catalog: CatalogBackend) -> int:
    """Make a loaded snapshot hold exactly the catalog's rows; returns how many changed."""
    rows = catalog.ids()
    held = vectors.ids()
    extra = np.setdiff1d(held, rows, assume_unique=True)
    missing = np.setdiff1d(rows, held, assume_unique=True)
    vectors.remove(extra.tolist())
    for start in range(0, missing.size, _REPLAY_CHUNK):
        ids, vecs = catalog.embeddings_for(missing[start : start + _REPLAY_CHUNK].tolist())
        vectors.add(ids, vecs)
    if extra.size or missing.size:
        log.info(
            "snapshot (max id %d): replayed %d rows, dropped %d deleted",
            vectors.max_id,
            missing.size,
            extra.size,
        )
    return int(extra.size + missing.size)
