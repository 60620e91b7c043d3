"""The service as deployed: `fusion-search serve` (uvicorn) in its own process, real HTTP."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import API, Apps, Server, encode, hit_ids, scene, scene_png
from http_checks import assert_error


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def start(servers: list[Server], data_dir: Path) -> Server:
    """A `fusion-search serve` on a port of its own (retried if another process took it)."""
    server = Server(data_dir, data_dir.parent / "server.log")
    servers.append(server)
    server.start()
    return server


def test_served_uploads_survive_kill_and_restart(servers: list[Server], apps: Apps,
                                                 tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start(servers, data)
    jpeg = encode(scene(1).image, "JPEG", quality=95)
    with httpx.Client(base_url=first.url, timeout=120) as http:
        resp = http.post(f"{API}/images", data={"caption": "served scenes", "tags": "served"},
                         files=[("files", (f"s{i}.png", scene_png(i), "image/png"))
                                for i in range(3)] + [("files", ("copy.jpg", jpeg, "image/jpeg"))])
        assert resp.status_code == 201, resp.text
        ids = [it["id"] for it in resp.json()["items"]]
        found = http.post(f"{API}/search/text", json={"query": "served scenes", "k": 10})
        assert sorted(hit_ids(found.json())) == sorted(ids)
        near = http.post(f"{API}/search/image", json={"image_id": ids[3], "k": 1})
        assert hit_ids(near.json()) == [ids[1]]  # the JPEG copy finds its PNG original
        assert http.get(f"{API}/images/{ids[0]}/file").content == scene_png(0)
    first.stop(signal.SIGKILL)  # no shutdown, no snapshot: rows are replayed from SQLite

    second = start(servers, data)
    with httpx.Client(base_url=second.url, timeout=120) as http:
        assert http.get(f"{API}/images").json()["total"] == 4
        found = http.post(f"{API}/search/text", json={"query": "served scenes", "k": 10})
        assert sorted(hit_ids(found.json())) == sorted(ids)
        near = http.post(f"{API}/search/image", json={"image_id": ids[3], "k": 1})
        assert hit_ids(near.json()) == [ids[1]]
        file = http.get(f"{API}/images/{ids[2]}/file")
        assert file.content == scene_png(2) and file.headers["x-content-type-options"] == "nosniff"

        assert http.delete(f"{API}/images/{ids[0]}").status_code == 200
        found = http.post(f"{API}/search/text", json={"query": "served scenes", "k": 10})
        assert sorted(hit_ids(found.json())) == sorted(ids[1:])
        assert_error(http.get(f"{API}/images/{ids[0]}"), 404, "not_found")
        assert_error(http.get(f"{API}/images/{ids[0]}/file"), 404, "not_found")
    snapshot = data / "index" / "vectors.faiss"
    before = snapshot.read_bytes()
    # graceful stop: uvicorn runs the lifespan shutdown, then re-raises the signal
    assert second.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert snapshot.read_bytes() != before  # the shutdown snapshotted the replayed rows

    reopened = apps.start(data)
    assert sorted(it["id"] for it in reopened.get(f"{API}/images").json()["items"]) == ids[1:]
