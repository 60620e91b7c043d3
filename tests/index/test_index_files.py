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


@pytest.mark.parametrize("syncfs", [True, False], ids=["one-filesystem-flush", "per-file-fsync"])
def test_put_many_stores_a_batch_and_flushes_it_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool
) -> None:
    import index.files as files_module
    from index import atomic

    if syncfs and not atomic.can_sync_filesystem():
        pytest.skip("no syncfs on this system")
    calls = {"syncfs": 0, "fsync": 0}
    real_sync, real_fsync = files_module.sync_filesystem, os.fsync

    def counting_sync(path: Path) -> None:
        calls["syncfs"] += 1
        real_sync(path)

    def counting_fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    monkeypatch.setattr(files_module, "sync_filesystem", counting_sync)
    monkeypatch.setattr(files_module, "can_sync_filesystem", lambda: syncfs)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    files = FileStore(tmp_path / "files")
    kept = files.put(b"already here", sha(b"already here"), "png")
    calls.update(syncfs=0, fsync=0)
    batch = [(f"image {i}".encode(), sha(f"image {i}".encode()), "jpg") for i in range(20)]
    written: list[str] = []
    names = files.put_many([*batch, (b"already here", sha(b"already here"), "png")],
                           on_written=written.append)
    assert names[-1] == kept and kept not in written, "a stored file is not written again"
    assert written == names[:-1]
    for (data, digest, _), name in zip(batch, names, strict=False):
        assert name == f"{digest[:2]}/{digest[2:4]}/{digest}.jpg"
        assert files.path(name).read_bytes() == data
    assert sorted(files.list_names()) == sorted(names)
    assert not list((tmp_path / "files").rglob("*.tmp"))
    if syncfs:
        assert calls == {"syncfs": 1, "fsync": 0}, "one flush for the whole batch"
    else:
        assert calls["syncfs"] == 0 and calls["fsync"] >= 40, "each file and its folder synced"


def test_put_many_refuses_a_bad_digest_before_writing_anything(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    with pytest.raises(ValueError):
        files.put_many([(b"one", sha(b"one"), "png"), (b"two", sha(b"one"), "png")])
    assert files.list_names() == []


def test_put_many_reports_what_it_wrote_before_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FileStore(tmp_path / "files")
    real_write = os.write
    writes = 0

    def fills_up(fd: int, data: bytes) -> int:
        nonlocal writes
        writes += 1
        if writes > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    batch = [(f"b{i}".encode(), sha(f"b{i}".encode()), "png") for i in range(5)]
    written: list[str] = []
    monkeypatch.setattr(os, "write", fills_up)
    with pytest.raises(StorageFull):
        files.put_many(batch, on_written=written.append)
    assert sorted(files.list_names()) == sorted(written) and len(written) == 2
    assert not list((tmp_path / "files").rglob("*.tmp"))


def test_put_many_writes_a_name_repeated_in_the_batch_once(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    same = (b"twice", sha(b"twice"), "png")
    written: list[str] = []
    names = files.put_many([same, (b"other", sha(b"other"), "png"), same],
                           on_written=written.append)
    assert names[0] == names[2] and len(written) == 2 and sorted(written) == sorted(set(names))
    assert files.path(names[0]).read_bytes() == b"twice"
