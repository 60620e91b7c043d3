"""What docs/operations.md tells an operator to do: back up while serving, restore, rebuild the
index, and what start-up says when the data dir holds another model's vectors."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

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
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "x").write_text("x")
    with pytest.raises(SystemExit):
        cli(["backup", str(tmp_path / "dest"), "--data", str(tmp_path / "nothing")])


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
