"""A full disk: the upload that cannot be stored gets 507 and leaves nothing half-written."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from http_checks import assert_error
from reliability_support import API, make_settings, scene

import index.atomic
from app.main import create_app


class DiskFull:
    """Makes ``os.write`` fail with ENOSPC for files under one folder while switched on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
        self.folder = str(folder.resolve())
        self.on = False
        self.refused = 0
        real_write = os.write

        def write(fd: int, data: bytes | memoryview) -> int:
            if self.on and os.readlink(f"/proc/self/fd/{fd}").startswith(self.folder):
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(index.atomic.os, "write", write)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path / "data", snapshot_every=1))) as c:
        yield c


def _everything_on_disk(data_dir: Path) -> list[str]:
    return sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / "files").rglob("*")
                  if p.is_file())


def _post(client: TestClient, *scenes: int) -> object:
    files = [("files", (f"s{i}.png", scene(i)[0], "image/png")) for i in scenes]
    return client.post(f"{API}/images", files=files, data={"caption": "full disk"})


def test_upload_on_a_full_disk_is_507_and_leaves_nothing(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    assert _post(client, 0).status_code == 201  # type: ignore[attr-defined]
    before_files = _everything_on_disk(data_dir)
    before = client.get(f"{API}/info").json()
    disk = DiskFull(monkeypatch, data_dir / "files")
    disk.on = True

    for scenes in ((1,), (2, 3, 4)):  # one file, and a batch whose every file must go
        resp = _post(client, *scenes)
        assert_error(resp, 507, "insufficient_storage")  # type: ignore[arg-type]
        assert disk.refused
        assert _everything_on_disk(data_dir) == before_files  # no temp file, no orphan
        info = client.get(f"{API}/info").json()
        assert (info["items"], info["vectors"]) == (before["items"], before["vectors"])
        listed = client.get(f"{API}/images", params={"limit": 100}).json()
        assert listed["total"] == before["items"]
        assert client.get("/health").status_code == 200

    disk.on = False  # space returns
    resp = _post(client, 2, 3, 4)
    assert resp.status_code == 201, resp.text  # type: ignore[attr-defined]
    new_ids = [it["id"] for it in resp.json()["items"]]  # type: ignore[attr-defined]
    info = client.get(f"{API}/info").json()
    assert info["items"] == info["vectors"] == before["items"] + 3
    for item_id, i in zip(new_ids, (2, 3, 4), strict=True):
        assert client.get(f"{API}/images/{item_id}/file").content == scene(i)[0]
    hits = client.post(f"{API}/search/text",
                       json={"query": scene(3)[1], "k": info["items"], "rerank": False}).json()
    assert new_ids[1] in {h["id"] for h in hits["hits"]}


def test_full_disk_for_the_snapshot_loses_nothing(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot is derived: when it cannot be written the upload is still acknowledged."""
    data_dir = tmp_path / "data"
    disk = DiskFull(monkeypatch, data_dir / "index")
    disk.on = True
    resp = _post(client, 5)
    assert resp.status_code == 201, resp.text  # type: ignore[attr-defined]
    assert disk.refused  # snapshot_every=1: the upload tried to snapshot
    assert not list((data_dir / "index").glob(".*.tmp"))
    info = client.get(f"{API}/info").json()
    assert info["items"] == info["vectors"] == 1
