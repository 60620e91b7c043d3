"""The service as deployed: `fusion-search serve` (uvicorn) in its own process, real HTTP."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import API, Apps, cli_command, encode, hit_ids, scene, scene_png, subprocess_env
from http_checks import assert_error, free_port

# Generous: start-up imports torch, and these cores are shared with a training run.
START_TIMEOUT_S = 300


class Server:
    """One `fusion-search serve` process on a free port over ``data_dir``."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = subprocess_env(FUSION_DATA_DIR=str(data_dir), FUSION_SNAPSHOT_EVERY="100000")
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cli_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "warning"],
                cwd=data_dir.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"server not ready after {START_TIMEOUT_S}s:\n{self.log.read_text()}")

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=120)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=60)


def start(servers: list[Server], data_dir: Path) -> Server:
    server = Server(data_dir, data_dir.parent / "server.log")
    servers.append(server)
    server.wait_ready()
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
