"""A damaged FAISS snapshot never stops the service: start-up rebuilds it from SQLite."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from fastapi.testclient import TestClient
from reliability_support import API, make_settings, scene

from app.main import create_app
from app.settings import Settings
from index.vectors import MAGIC, VectorIndex

N_ITEMS = 12


def _truncate(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _zero(raw: bytes) -> bytes:
    return b"\x00" * len(raw)


def _garbage(raw: bytes) -> bytes:
    return np.random.default_rng(7).bytes(len(raw))


def _flip_payload_byte(raw: bytes) -> bytes:
    """Header intact, one payload byte changed: only the checksum can tell."""
    body = bytearray(raw)
    body[-10] ^= 0xFF
    return bytes(body)


def _empty(raw: bytes) -> bytes:
    return b""


def _bad_header(raw: bytes) -> bytes:
    return MAGIC + b"\xff\xff\xff\x7f" + b"{not json"


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": _truncate, "zeroed": _zero, "garbage": _garbage,
    "one payload byte flipped": _flip_payload_byte, "empty": _empty, "bad header": _bad_header,
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """A data dir with N_ITEMS captioned scenes and a valid snapshot; never changed."""
    data_dir = tmp_path_factory.mktemp("pristine") / "data"
    ids: dict[int, str] = {}
    with TestClient(create_app(make_settings(data_dir, snapshot_every=5))) as client:
        for i in range(N_ITEMS):
            data, caption = scene(100 + i)
            resp = client.post(f"{API}/images", files={"files": ("s.png", data, "image/png")},
                               data={"caption": caption})
            assert resp.status_code == 201, resp.text
            ids[resp.json()["items"][0]["id"]] = caption
    assert (data_dir / "index" / "vectors.faiss").is_file()
    return data_dir, ids


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_snapshot_is_rebuilt_from_sqlite(
    pristine: tuple[Path, dict[int, str]], tmp_path: Path, name: str
) -> None:
    source, ids = pristine
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    snapshot = data_dir / "index" / "vectors.faiss"
    snapshot.write_bytes(CORRUPTIONS[name](snapshot.read_bytes()))

    with TestClient(create_app(make_settings(data_dir))) as client:
        info = client.get(f"{API}/info").json()
        assert info["items"] == info["vectors"] == N_ITEMS, info
        for item_id, caption in ids.items():
            resp = client.post(f"{API}/search/text",
                               json={"query": caption, "k": N_ITEMS, "rerank": False})
            assert resp.status_code == 200, resp.text
            assert item_id in {h["id"] for h in resp.json()["hits"]}
        # and it keeps working: a new upload is searchable at once
        data, caption = scene(200)
        resp = client.post(f"{API}/images", files={"files": ("n.png", data, "image/png")},
                           data={"caption": caption})
        assert resp.status_code == 201
        assert client.get(f"{API}/info").json()["vectors"] == N_ITEMS + 1
    # the rebuild wrote a good snapshot again
    loaded = VectorIndex.load(snapshot, info["dim"], info["model"])
    assert loaded is not None and loaded.ntotal == N_ITEMS + 1


def test_snapshot_is_only_read_from_the_data_dir(
    pristine: tuple[Path, dict[int, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No setting can name another snapshot, index or catalog file: the data dir is the only path
    # that holds them (the runtime cache holds exported ONNX graphs, the files dir image files).
    paths = {name for name, field in Settings.model_fields.items()
             if field.annotation is Path or Path in get_args(field.annotation)}
    assert paths == {"data_dir", "runtime_cache", "files_dir"}
    suspicious = [n for n in Settings.model_fields
                  if any(w in n for w in ("snapshot_path", "index_path", "faiss", "catalog"))]
    assert not suspicious

    # A snapshot of another collection beside the process or named by a would-be setting is
    # ignored; the app's own (missing) snapshot is rebuilt from its catalog.
    source, ids = pristine
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    (data_dir / "index" / "vectors.faiss").unlink()
    foreign = VectorIndex.create(info_dim(source), "Flat")
    foreign.add(np.array([999], dtype=np.int64),
                np.ones((1, info_dim(source)), dtype=np.float32) / info_dim(source) ** 0.5)
    for place in (tmp_path / "vectors.faiss", tmp_path / "index" / "vectors.faiss"):
        place.parent.mkdir(exist_ok=True)
        foreign.save(place)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSION_SNAPSHOT_PATH", str(tmp_path / "vectors.faiss"))
    monkeypatch.setenv("FUSION_INDEX_PATH", str(tmp_path / "index" / "vectors.faiss"))
    with TestClient(create_app(make_settings(data_dir))) as client:
        info = client.get(f"{API}/info").json()
        assert info["items"] == info["vectors"] == N_ITEMS
        resp = client.post(f"{API}/search/text", json={"query": "a", "k": 50, "rerank": False})
        assert 999 not in {h["id"] for h in resp.json()["hits"]}
        store = client.app.state.service.store  # type: ignore[attr-defined]
        assert store.data_dir == data_dir
    assert (data_dir / "index" / "vectors.faiss").is_file()


def info_dim(data_dir: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{data_dir / 'catalog.sqlite3'}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'embed_dim'").fetchone()[0])
