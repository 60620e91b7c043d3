"""Data-dir operations behind `fusion-search backup` and `fusion-search reembed`: a consistent
copy of a data dir that may be served meanwhile, and a re-encoding of one into a new data dir
with the configured model. The CLI parses the arguments, calls these and prints their summary."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def backup(dest: str | Path, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Copy a data dir's catalog (SQLite online backup) and the files it names, consistently,
    while a server may be using it. The FAISS index is left out: it is rebuilt on start.

    Returns the summary (``integrity`` is "ok" for a sound copy); raises SystemExit when the
    source is not a data dir or ``dest`` is not empty."""
    from index.catalog import Catalog
    from index.files import FileStore
    from index.store import CATALOG_NAME, FILES_DIR

    from .settings import Settings

    src = Path(data_dir) if data_dir else Settings().data_dir
    dest = Path(dest)
    if not (src / CATALOG_NAME).is_file():
        raise SystemExit(f"{src} holds no {CATALOG_NAME}: not a data dir")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} exists and is not empty")
    (dest / FILES_DIR).mkdir(parents=True, exist_ok=True)
    live = Catalog(src / CATALOG_NAME)
    try:
        live.backup(dest / CATALOG_NAME)
    finally:
        live.close()
    copy = Catalog(dest / CATALOG_NAME)
    try:
        src_files, dest_files = FileStore(src / FILES_DIR), FileStore(dest / FILES_DIR)
        gone = set()
        names = sorted(copy.all_files())
        for name in names:
            target = dest_files.path(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(src_files.path(name), target)
            except FileNotFoundError:  # deleted from the live dir after the catalog copy
                gone.add(name)
        # Drop the rows whose files were deleted meanwhile: the copy never names a missing file.
        dropped = [it.id for it in copy.list(0, max(copy.count(), 1))[0] if it.file in gone]
        for item_id in dropped:
            copy.delete(item_id)
        check, count = copy.integrity_check(), copy.count()
    finally:
        copy.close()
    os.sync()
    return {"dest": str(dest), "items": count, "files": len(names) - len(gone),
            "dropped_deleted_meanwhile": len(dropped), "integrity": check}


def reembed(source: str | Path, data_dir: str | Path | None = None,
            batch: int = 64) -> dict[str, Any]:
    """Re-encode every image of an old data dir (or a backup of one) into a new data dir with
    the configured model, keeping captions, tags and original names (ids are new).

    Returns the summary; raises SystemExit when the new data dir is the source."""
    from index.catalog import Catalog
    from index.files import FileStore
    from index.store import CATALOG_NAME, FILES_DIR
    from models import decode_image

    from .main import build_service
    from .settings import Settings

    source = Path(source)
    settings = Settings(data_dir=data_dir) if data_dir else Settings()
    if settings.data_dir.resolve() == source.resolve():
        raise SystemExit("re-embed into a new data dir, not the source")
    service = build_service(settings.model_copy(update={"demo": False}))
    old, files = Catalog(source / CATALOG_NAME), FileStore(source / FILES_DIR)
    added = 0
    try:
        newest_first, total = old.list(0, max(old.count(), 1))
        oldest_first = newest_first[::-1]
        for start in range(0, total, batch):
            records = []
            for it in oldest_first[start : start + batch]:
                data = files.path(it.file).read_bytes()
                records.append((data, decode_image(data, settings.max_pixels),
                                it.original_name, it.caption, it.tags))
            added += sum(not dup for _, dup in service.store_decoded(records))
    finally:
        old.close()
        service.store.close()
    return {"source_items": total, "added": added, "model": service.model.name,
            "dim": service.model.embed_dim}
