"""Several server processes on one data directory, as an operator runs them: two uvicorn servers
side by side, `fusion-search ingest` beside them, `fusion-search serve --workers 2`.

The promises under test: an upload acknowledged by one process is found by every other one's
next search (a search applies the change log before it reads); a delete answered by one is gone
from every other one's search and listing; a kill -9 of one server under concurrent uploads to
both loses no acknowledged upload, in the catalog or in any server's search after it restarts.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_checks import free_port, terminate, wait_ready
from reliability_support import API, SETTING_VARS, LiveServer, scene

pytestmark = pytest.mark.slow

# The default FUSION_FOLLOW_INTERVAL is 0.2 s; the bound leaves room for busy CI cores (a search
# that encodes its query image is part of every look).
LAG_BOUND_S = 10.0
START_TIMEOUT_S = 300.0


def _start_all(*servers: LiveServer) -> None:
    """Start the servers at once (each loads the model) and wait until every one is ready."""
    errors: list[BaseException] = []

    def start(server: LiveServer) -> None:
        try:
            server.start(START_TIMEOUT_S)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    root = tmp_path_factory.mktemp("workers")
    a = LiveServer(root / "data", root / "a.log")
    b = LiveServer(root / "data", root / "b.log")
    _start_all(a, b)
    yield a, b
    for server in (a, b):
        if server.alive():
            server.stop()


def _upload(client: httpx.Client, i: int) -> int:
    """Upload scene ``i``; its new item's id."""
    data, caption = scene(i)
    resp = client.post(f"{API}/images", data={"caption": caption},
                       files={"files": (f"scene{i}.png", data, "image/png")})
    assert resp.status_code == 201, resp.text
    (item,) = resp.json()["items"]
    assert item["duplicate"] is False, item
    return int(item["id"])


def _top_hit(url: str, i: int) -> tuple[int, float] | None:
    """(id, score) of the best hit for scene ``i``'s own image on this server."""
    data, _ = scene(i)
    resp = httpx.post(f"{url}{API}/search/image", data={"k": "1"},
                      files={"file": ("q.png", data, "image/png")}, timeout=60)
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    return (hits[0]["id"], hits[0]["score"]) if hits else None


def _finds(url: str, i: int, item_id: int) -> bool:
    hit = _top_hit(url, i)
    return hit is not None and hit[0] == item_id and hit[1] > 0.999


def _lag(url: str, i: int, item_id: int, since: float) -> float:
    """Seconds from ``since`` until this server's search finds the item first."""
    while not _finds(url, i, item_id):
        assert time.monotonic() - since < LAG_BOUND_S, f"item {item_id} not found on {url}"
        time.sleep(0.02)
    return time.monotonic() - since


def _info(url: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}{API}/info", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _listed_ids(url: str) -> set[int]:
    page = httpx.get(f"{url}{API}/images", params={"limit": 500}, timeout=30).json()
    assert page["total"] <= 500, page["total"]
    return {item["id"] for item in page["items"]}


def test_an_upload_to_one_server_is_found_by_the_other(
    pair: tuple[LiveServer, LiveServer],
) -> None:
    a, b = pair
    for n in range(6):
        writer, reader = (a, b) if n % 2 == 0 else (b, a)
        with httpx.Client(base_url=writer.url, timeout=60) as client:
            item_id = _upload(client, n)
        assert _finds(writer.url, n, item_id)  # the acknowledging process
        # the other one's next search too, with no wait: it applies the log before it reads
        assert _finds(reader.url, n, item_id), f"{reader.url} missed upload {n} of {writer.url}"


def test_a_delete_on_one_server_is_gone_from_the_other(
    pair: tuple[LiveServer, LiveServer],
) -> None:
    a, b = pair
    with httpx.Client(base_url=a.url, timeout=60) as client:
        item_id = _upload(client, 100)
    _lag(b.url, 100, item_id, time.monotonic())
    assert httpx.delete(f"{b.url}{API}/images/{item_id}", timeout=60).status_code == 200
    # at once on the other server: its listing and metadata read the shared catalog, and its
    # search leaves out a hit whose row is gone, whether or not it has followed the log yet
    assert item_id not in _listed_ids(a.url)
    assert httpx.get(f"{a.url}{API}/images/{item_id}", timeout=30).status_code == 404
    hit = _top_hit(a.url, 100)
    assert hit is None or hit[0] != item_id
    deadline = time.monotonic() + LAG_BOUND_S
    while (info := _info(a.url))["vectors"] != info["items"]:  # and its index drops it
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("fusion-search")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               FUSION_TORCH_THREADS="1", **extra)
    return env


def test_ingest_beside_running_servers(
    pair: tuple[LiveServer, LiveServer], tmp_path: Path,
) -> None:
    a, b = pair
    folder = tmp_path / "incoming"
    folder.mkdir()
    scenes = range(200, 206)
    for i in scenes:
        (folder / f"scene{i}.png").write_bytes(scene(i)[0])
    done = subprocess.run(
        [*_cli(), "ingest", str(folder), "--data", str(a.data_dir), "--device", "cpu",
         "--workers", "1", "--encoders", "1"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ingested = time.monotonic()
    by_sha = {}
    with closing(sqlite3.connect(f"file:{a.data_dir / 'catalog.sqlite3'}?mode=ro",
                                 uri=True)) as conn:
        by_sha = dict(conn.execute("SELECT sha256, id FROM items"))
    for i in scenes:
        item_id = by_sha[hashlib.sha256(scene(i)[0]).hexdigest()]
        for server in (a, b):
            _lag(server.url, i, item_id, ingested)


def test_kill_9_of_one_server_under_concurrent_uploads_loses_nothing_acknowledged(
    pair: tuple[LiveServer, LiveServer],
) -> None:
    a, b = pair
    acked: dict[int, int] = {}  # scene -> id, answered 201
    refused: list[str] = []  # any other answer
    lock = threading.Lock()
    stop = threading.Event()
    scenes = iter(range(1000, 100_000))

    def uploader(server: LiveServer) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                with lock:
                    i = next(scenes)
                data, caption = scene(i)
                try:
                    resp = client.post(f"{API}/images", data={"caption": caption},
                                       files={"files": (f"s{i}.png", data, "image/png")})
                except httpx.TransportError:  # b died with this one in flight: not acknowledged
                    return
                with lock:
                    if resp.status_code == 201:
                        acked[i] = resp.json()["items"][0]["id"]
                    else:
                        refused.append(f"{resp.status_code}: {resp.text[:200]}")

    threads = [threading.Thread(target=uploader, args=(s,)) for s in (a, a, b, b)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(acked) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(b.pid, signal.SIGKILL)  # in the middle of its uploads
    time.sleep(0.5)  # a keeps taking uploads meanwhile
    stop.set()
    for t in threads:
        t.join(timeout=120)
    b.kill()
    assert refused == []
    assert len(acked) >= 12
    b.start(START_TIMEOUT_S)
    listed = _listed_ids(a.url)
    assert set(acked.values()) <= listed
    for server in (a, b):
        lost = [i for i, item_id in acked.items() if not _finds(server.url, i, item_id)]
        assert lost == [], f"acknowledged but not found on {server.url}: {lost}"
        info = _info(server.url)
        assert info["items"] == len(listed)
    deadline = time.monotonic() + LAG_BOUND_S
    while (info := _info(a.url))["vectors"] != info["items"]:
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


def _workers_with_store_open(pid: int, data_dir: Path) -> list[int]:
    """The uvicorn worker processes under ``pid`` that hold ``data_dir`` open shared (they have
    its write lock file open: their store is open, their model loaded before it)."""
    lock = str(data_dir / ".write.lock")
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if "spawn_main" not in Path(f"/proc/{child}/cmdline").read_text():
                continue  # e.g. multiprocessing's resource tracker
            fds = [os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()]
        except OSError:  # exited meanwhile
            continue
        if lock in fds:
            found.append(int(child))
    return found


def test_serve_with_two_workers(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = _env(FUSION_DATA_DIR=str(tmp_path / "data"))
    del env["FUSION_TORCH_THREADS"], env["OMP_NUM_THREADS"]  # serve picks each worker's share
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*_cli(), "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(proc, url, START_TIMEOUT_S)
        # /ready answered from one worker; the other may still be loading its model
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(_workers_with_store_open(proc.pid, tmp_path / "data")) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        ids = {}
        for i in range(300, 304):  # a new connection each: the workers share the socket
            with httpx.Client(base_url=url, timeout=60) as client:
                ids[i] = _upload(client, i)
        for _ in range(3):  # every search, whichever worker takes it, finds every upload
            for i, item_id in ids.items():
                assert _finds(url, i, item_id), f"a search missed upload {i}"
        share = max(1, len(os.sched_getaffinity(0)) // 2)  # the cores, split between the two
        assert {_info(url)["threads"] for _ in range(6)} == {share}
    except BaseException:
        print(log.read_text(errors="replace")[-3000:])
        raise
    finally:
        terminate(proc)
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in log.read_text(errors="replace")
