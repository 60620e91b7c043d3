"""Durable file replacement: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

from index.errors import StorageFull

TEMP_SUFFIX = ".tmp"
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSErrors that mean "no space left" (ENOSPC, EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk.

    Raises OSError when the folder cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):  # not Linux (or a libc without it)
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return cast(Callable[[int], int], fn)


_SYNCFS = _load_syncfs()


def can_sync_filesystem() -> bool:
    """True where ``sync_filesystem`` is one syscall (Linux ``syncfs``)."""
    return _SYNCFS is not None


def sync_filesystem(path: Path) -> None:
    """Flush every file and folder entry of the filesystem holding ``path`` to disk (Linux
    ``syncfs``): one call makes a whole batch of writes durable, where a file-by-file fsync pays a
    journal commit per file and per folder.

    Raises OSError when it fails or where the call does not exist (see can_sync_filesystem).
    """
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available here")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A fresh hidden temp name next to ``path``; ``remove_temps`` recognises it."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def write_atomic(path: Path, chunks: Iterable[bytes | memoryview], durable: bool = True) -> None:
    """Replace ``path`` with the concatenated chunks, all or nothing, durably.

    ``durable=False`` skips the file's and the folder's fsync: for a batch the caller makes
    durable at once with ``sync_filesystem`` before anything refers to the files.

    The temp file is removed on any failure. Raises StorageFull when the disk or quota is full,
    OSError for other I/O failures.
    """
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for chunk in chunks:
                _write_all(fd, chunk)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise StorageFull(f"no space left to write {path.name}") from exc
        raise
    if durable:
        fsync_dir(path.parent)


def remove_temps(folder: Path) -> int:
    """Delete temp files left in ``folder`` by writes that never finished; returns how many.

    Raises OSError when the folder cannot be listed.
    """
    removed = 0
    for entry in folder.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed += 1
    return removed


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]
