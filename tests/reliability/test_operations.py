"""What docs/operations.md tells an operator to do: back up while serving, restore, rebuild the
index, and what start-up says when the data dir holds another model's vectors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from reliability_support import API, make_settings, scene

from app.cli import main as cli
from app.main import create_app
from index import DimensionMismatch, ModelMismatch


def _upload(client: TestClient, i: int) -> int:
    data, caption = scene(i)
    resp = client.post(f"{API}/images", files={"files": ("s.png", data, "image/png")},
                       data={"caption": caption, "tags": "kept"})
    assert resp.status_code == 201, resp.text
    return int(resp.json()["items"][0]["id"])


def test_backup_while_serving_then_restore(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, backup = tmp_path / "data", tmp_path / "backup"
    with TestClient(create_app(make_settings(data_dir))) as client:
        ids = [_upload(client, 300 + i) for i in range(6)]
        client.delete(f"{API}/images/{ids[0]}")
        assert cli(["backup", str(backup), "--data", str(data_dir)]) == 0
        _upload(client, 400)  # after the backup: not in it
    report = capsys.readouterr().out
    assert '"items": 5' in report and '"integrity": "ok"' in report
    assert not (backup / "index").exists()  # derived; rebuilt on start

    with TestClient(create_app(make_settings(backup))) as client:
        info = client.get(f"{API}/info").json()
        assert info["items"] == info["vectors"] == 5
        for item_id, i in zip(ids[1:], range(301, 306), strict=True):
            item = client.get(f"{API}/images/{item_id}").json()
            assert item["tags"] == ["kept"] and item["caption"] == scene(i)[1]
            content = client.get(f"{API}/images/{item_id}/file").content
            assert hashlib.sha256(content).hexdigest() == item["sha256"]
        assert client.get(f"{API}/images/{ids[0]}").status_code == 404
        # ids keep counting after the backup's highest
        assert _upload(client, 500) > ids[-1]


def test_backup_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    data_dir, dest = tmp_path / "data", tmp_path / "dest"
    with TestClient(create_app(make_settings(data_dir))) as client:
        _upload(client, 310)
    dest.mkdir()
    (dest / "x").write_text("someone's file")
    with pytest.raises(SystemExit, match="exists and is not empty"):
        cli(["backup", str(dest), "--data", str(data_dir)])
    assert sorted(p.name for p in dest.iterdir()) == ["x"]  # nothing written, nothing removed
    assert (dest / "x").read_text() == "someone's file"
    with pytest.raises(SystemExit, match="not a data dir"):
        cli(["backup", str(tmp_path / "fresh"), "--data", str(tmp_path / "nothing")])


@contextlib.contextmanager
def _before_first_file_copy(action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` once, between the backup's catalog copy and its first file copy."""
    real = shutil.copy2
    done: list[bool] = []

    def copy2(src: Any, dst: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            action()
        return real(src, dst, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "copy2", copy2)
        yield
    assert done, "the backup copied no file"


def test_backup_drops_an_item_deleted_while_its_files_are_copied(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, backup = tmp_path / "data", tmp_path / "backup"
    with TestClient(create_app(make_settings(data_dir))) as client:
        ids = [_upload(client, 320 + i) for i in range(4)]
        victim = ids[0]  # the backup copies files in name order; any one of them will do

        def delete_victim() -> None:
            assert client.delete(f"{API}/images/{victim}").status_code == 200

        with _before_first_file_copy(delete_victim):
            assert cli(["backup", str(backup), "--data", str(data_dir)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["dropped_deleted_meanwhile"] == 1, report
    assert (report["items"], report["files"], report["integrity"]) == (3, 3, "ok")
    with TestClient(create_app(make_settings(backup))) as client:
        assert client.get(f"{API}/images/{victim}").status_code == 404
        for item_id in ids[1:]:
            item = client.get(f"{API}/images/{item_id}").json()
            content = client.get(f"{API}/images/{item_id}/file").content
            assert hashlib.sha256(content).hexdigest() == item["sha256"]


def test_backup_exits_1_when_the_copy_fails_its_integrity_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, backup = tmp_path / "data", tmp_path / "backup"
    with TestClient(create_app(make_settings(data_dir))) as client:
        for i in range(3):
            _upload(client, 330 + i)

    def damage_the_copy() -> None:
        # a b-tree page header overwritten, as a failing disk under the destination would
        with (backup / "catalog.sqlite3").open("r+b") as f:
            f.seek(2 * 4096)
            f.write(b"\x0d" + b"\xff" * 7)

    with _before_first_file_copy(damage_the_copy):
        code = cli(["backup", str(backup), "--data", str(data_dir)])
    out = capsys.readouterr().out
    assert code == 1, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["integrity"] != "ok" and report["integrity"], report


def test_reembed_into_a_new_data_dir_keeps_captions_and_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    with TestClient(create_app(make_settings(old))) as client:
        for i in range(5):
            _upload(client, 800 + i)
    assert cli(["reembed", str(old), "--data", str(new), "--batch", "2"]) == 0
    assert '"added": 5' in capsys.readouterr().out
    with TestClient(create_app(make_settings(new))) as client:
        info = client.get(f"{API}/info").json()
        assert info["items"] == info["vectors"] == 5
        page = client.get(f"{API}/images", params={"tag": "kept"}).json()
        assert sorted(it["caption"] for it in page["items"]) == sorted(
            scene(800 + i)[1] for i in range(5))
        hits = client.post(f"{API}/search/text",
                           json={"query": scene(802)[1], "k": 5, "rerank": False}).json()
        assert len(hits["hits"]) == 5


def test_deleting_the_snapshot_rebuilds_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with TestClient(create_app(make_settings(data_dir))) as client:
        for i in range(4):
            _upload(client, 600 + i)
    (data_dir / "index" / "vectors.faiss").unlink()
    with TestClient(create_app(make_settings(data_dir))) as client:
        info = client.get(f"{API}/info").json()
        assert info["items"] == info["vectors"] == 4
    assert (data_dir / "index" / "vectors.faiss").is_file()


def _set_meta(data_dir: Path, **values: str) -> None:
    with contextlib.closing(sqlite3.connect(data_dir / "catalog.sqlite3")) as conn, conn:
        conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                         [(v, k) for k, v in values.items()])


def test_another_models_data_dir_is_refused_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with TestClient(create_app(make_settings(data_dir))) as client:
        _upload(client, 700)
    _set_meta(data_dir, embed_dim="512")
    with pytest.raises(DimensionMismatch, match="512-dimensional embeddings") as caught, \
            TestClient(create_app(make_settings(data_dir))):
        pass
    assert "re-embed" in str(caught.value)

    _set_meta(data_dir, embed_dim=str(caught.value.model_dim), model_name="ViT-B-32")
    with pytest.raises(ModelMismatch, match="ViT-B-32"), \
            TestClient(create_app(make_settings(data_dir))):
        pass
