"""Content-addressed image files: ``<root>/ab/cd/<sha256>.<ext>``, written atomically."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from index.atomic import fsync_dir, remove_temps, write_atomic

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
        name = file_name(sha256, ext)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError("sha256 does not match the data")
        target = self.root / name
        if target.is_file():
            return name
        self._make_parents(target.parent)
        write_atomic(target, [data])
        return name

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

    def _make_parents(self, folder: Path) -> None:
        # A new folder entry is only durable once its parent is synced too.
        missing = [p for p in (folder.parent, folder) if not p.is_dir()]
        folder.mkdir(parents=True, exist_ok=True)
        for created in missing:
            fsync_dir(created.parent)
