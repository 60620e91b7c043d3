"""Content-addressed image files: ``<root>/ab/cd/<sha256>.<ext>``, written atomically."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from index.atomic import (
    can_sync_filesystem,
    fsync_dir,
    remove_temps,
    sync_filesystem,
    write_atomic,
)

_NAME = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/(\1\2[0-9a-f]{60})\.([a-z0-9]{1,10})")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXT = re.compile(r"[a-z0-9]{1,10}")


def file_name(sha256: str, ext: str) -> str:
    """The relative name a file with this digest and extension is stored under.

    Raises ValueError for a digest that is not 64 lowercase hex digits or a bad extension.
    """
    ext = ext.lower().lstrip(".")
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    if not _EXT.fullmatch(ext):
        raise ValueError(f"bad file extension: {ext!r}")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"


class FileStore:
    """Image bytes on disk under their sha256; only names this class made are ever opened."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, sha256: str, ext: str) -> str:
        """Store ``data`` durably and return its relative name; a no-op when already stored.

        Raises ValueError when ``sha256`` is not the digest of ``data``, StorageFull when the disk
        is full (no temp file is left behind), OSError for other I/O failures.
        """
        name, target = self._checked(data, sha256, ext)
        if not target.is_file():
            self._make_parents(target.parent, durable=True)
            write_atomic(target, [data])
        return name

    def put_many(self, files: Sequence[tuple[bytes, str, str]],
                 on_written: Callable[[str], None] | None = None) -> list[str]:
        """``put`` for a batch of (data, sha256, ext), durable when it returns.

        Where the filesystem can be flushed in one call (Linux ``syncfs``) a batch of more than
        one new file is written without per-file fsyncs and flushed once at the end: the same
        guarantee for the caller, which refers to none of the names before this returns, at one
        flush instead of two or three per file. ``on_written`` is called with each name as soon
        as its file exists, so a caller can remove what a failed batch left.

        Raises what ``put`` raises; files written before a failure stay (see ``on_written``).
        """
        todo = [(data, *self._checked(data, sha, ext)) for data, sha, ext in files]
        fresh: dict[str, tuple[bytes, Path]] = {}  # one write per new name
        for data, name, target in todo:
            if name not in fresh and not target.is_file():
                fresh[name] = (data, target)
        batched = len(fresh) > 1 and can_sync_filesystem()
        for name, (data, target) in fresh.items():
            self._make_parents(target.parent, durable=not batched)
            write_atomic(target, [data], durable=not batched)
            if on_written is not None:
                on_written(name)
        if batched:
            sync_filesystem(self.root)
        return [name for _, name, _ in todo]

    def _checked(self, data: bytes, sha256: str, ext: str) -> tuple[str, Path]:
        name = file_name(sha256, ext)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError("sha256 does not match the data")
        return name, self.root / name

    def path(self, name: str) -> Path:
        """Absolute path of a stored name.

        Raises ValueError for anything that is not a content-address name (no traversal).
        """
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid stored file name: {name!r}")
        return self.root / name

    def delete(self, name: str) -> None:
        """Remove a stored file; missing files are ignored.

        Raises ValueError for an invalid name, OSError when the file cannot be removed.
        """
        self.path(name).unlink(missing_ok=True)

    def list_names(self) -> list[str]:
        """Every stored name, sorted. Raises OSError when the folder cannot be read."""
        names = (p.relative_to(self.root).as_posix() for p in self.root.glob("??/??/*"))
        return sorted(n for n in names if _NAME.fullmatch(n))

    def remove_stale_temps(self) -> int:
        """Delete temp files of writes interrupted by a crash; returns how many.

        Raises OSError when a folder cannot be read.
        """
        removed = remove_temps(self.root)
        for folder in self.root.glob("??/??"):
            removed += remove_temps(folder)
        return removed

    def _make_parents(self, folder: Path, durable: bool) -> None:
        # A new folder entry is only durable once its parent is synced too (or the whole
        # filesystem is, for a batch).
        missing = [p for p in (folder.parent, folder) if not p.is_dir()]
        folder.mkdir(parents=True, exist_ok=True)
        if durable:
            for created in missing:
                fsync_dir(created.parent)
