"""Content-addressed file store: atomic writes, name validation, disk-full handling."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from index.errors import StorageFull
from index.files import FileStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_path_list_delete(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    data = b"\x89PNG fake"
    name = files.put(data, sha(data), "PNG")
    digest = sha(data)
    assert name == f"{digest[:2]}/{digest[2:4]}/{digest}.png"
    assert files.path(name).read_bytes() == data
    assert files.put(data, sha(data), "png") == name, "a second put is a no-op"
    assert files.list_names() == [name]
    assert not list((tmp_path / "files").rglob("*.tmp"))
    files.delete(name)
    assert files.list_names() == []
    files.delete(name)  # already gone: fine


def test_put_refuses_data_that_does_not_match_its_digest(tmp_path: Path) -> None:
    files = FileStore(tmp_path)
    with pytest.raises(ValueError):
        files.put(b"one", sha(b"two"), "png")
    assert files.list_names() == []


@pytest.mark.parametrize("ext", ["", "p/g", "..", "jpeg\x00", "x" * 11])
def test_put_refuses_bad_extensions(tmp_path: Path, ext: str) -> None:
    with pytest.raises(ValueError):
        FileStore(tmp_path).put(b"x", sha(b"x"), ext)


GOOD = sha(b"x")


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        f"{GOOD[:2]}/{GOOD[2:4]}/../../../{GOOD}.png",
        f"{GOOD[:2]}/{GOOD[2:4]}/{GOOD}.png/..",
        f"00/00/{GOOD}.png",  # folders that do not match the digest
        f"{GOOD[:2]}/{GOOD[2:4]}/{GOOD.upper()}.png",
        f"{GOOD[:2]}/{GOOD[2:4]}/{GOOD}",
        f"{GOOD[:2]}\\{GOOD[2:4]}\\{GOOD}.png",
        f"./{GOOD[:2]}/{GOOD[2:4]}/{GOOD}.png",
        "",
    ],
)
def test_path_refuses_anything_but_content_addresses(tmp_path: Path, name: str) -> None:
    files = FileStore(tmp_path / "files")
    with pytest.raises(ValueError):
        files.path(name)
    with pytest.raises(ValueError):
        files.delete(name)


def test_disk_full_becomes_storage_full_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FileStore(tmp_path / "files")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    data = b"some image"
    with monkeypatch.context() as m:
        m.setattr(os, "write", full)
        with pytest.raises(StorageFull):
            files.put(data, sha(data), "png")
    assert [p for p in (tmp_path / "files").rglob("*") if p.is_file()] == []


def test_quota_exceeded_is_storage_full_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FileStore(tmp_path / "files")

    def over_quota(fd: int, data: object) -> int:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with monkeypatch.context() as m:
        m.setattr(os, "write", over_quota)
        with pytest.raises(StorageFull):
            files.put(b"q", sha(b"q"), "png")


def test_other_write_errors_propagate_without_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FileStore(tmp_path / "files")

    def broken(fd: int, data: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    with monkeypatch.context() as m:
        m.setattr(os, "write", broken)
        with pytest.raises(OSError) as info:
            files.put(b"e", sha(b"e"), "png")
    assert not isinstance(info.value, StorageFull)
    assert [p for p in (tmp_path / "files").rglob("*") if p.is_file()] == []


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = FileStore(tmp_path / "files")
    real_write = os.write
    data = bytes(range(256)) * 40

    def dribble(fd: int, chunk: bytes) -> int:
        return real_write(fd, bytes(chunk)[:1000])

    with monkeypatch.context() as m:
        m.setattr(os, "write", dribble)
        name = files.put(data, sha(data), "bin")
    assert files.path(name).read_bytes() == data


def test_stale_temps_are_removed(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    name = files.put(b"kept", sha(b"kept"), "png")
    folder = files.path(name).parent
    (folder / f".{Path(name).name}.abc123.tmp").write_bytes(b"half")
    assert files.remove_stale_temps() == 1
    assert files.list_names() == [name]
