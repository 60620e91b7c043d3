"""Two replicas on one PostgreSQL catalog, as an operator runs them on two machines: two uvicorn
servers, each with its own data dir (its FAISS copy), sharing FUSION_DATABASE_URL and a files
volume (FUSION_FILES_DIR); the database is a throwaway cluster (tests/pg_support.py).

The promises under test: an upload acknowledged by one replica is found by the other's next
search and its file is served there; a delete answered by one is gone from the
other; PostgreSQL stopped abruptly (``pg_ctl stop -m immediate``) under load makes clients get
503 with Retry-After, never a 500, loses nothing acknowledged, and both replicas serve again
once it is back, without being restarted.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pg_support import PgCluster, require_cluster
from reliability_support import API, LiveServer, record, scene

pytestmark = pytest.mark.slow

LAG_BOUND_S = 10.0
START_TIMEOUT_S = 300.0
Pair = tuple[LiveServer, LiveServer, PgCluster]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    cluster = require_cluster()
    root = tmp_path_factory.mktemp("pg-replicas")
    env = {"FUSION_DATABASE_URL": cluster.create_database(),
           "FUSION_FILES_DIR": str(root / "files")}
    a = LiveServer(root / "a", root / "a.log", **env)
    b = LiveServer(root / "b", root / "b.log", **env)
    try:
        errors: list[BaseException] = []

        def start(server: LiveServer) -> None:
            try:
                server.start(START_TIMEOUT_S)
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        yield a, b, cluster
    finally:
        for server in (a, b):
            if server.alive():
                server.stop()
        cluster.destroy()


def _upload(url: str, i: int) -> httpx.Response:
    data, caption = scene(i)
    return httpx.post(f"{url}{API}/images", data={"caption": caption},
                      files={"files": (f"scene{i}.png", data, "image/png")}, timeout=60)


def _top_hit(url: str, i: int) -> int | None:
    data, _ = scene(i)
    resp = httpx.post(f"{url}{API}/search/image", data={"k": "1"},
                      files={"file": ("q.png", data, "image/png")}, timeout=60)
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    return int(hits[0]["id"]) if hits and hits[0]["score"] > 0.999 else None


def _lag(url: str, i: int, item_id: int) -> float:
    """Seconds until this server's search finds the item first."""
    since = time.monotonic()
    while _top_hit(url, i) != item_id:
        assert time.monotonic() - since < LAG_BOUND_S, f"item {item_id} not found on {url}"
        time.sleep(0.02)
    return time.monotonic() - since


def _info(url: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}{API}/info", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_an_upload_to_one_replica_is_found_and_served_by_the_other(replicas: Pair) -> None:
    a, b, _ = replicas
    for n in range(4):
        writer, reader = (a, b) if n % 2 == 0 else (b, a)
        resp = _upload(writer.url, n)
        assert resp.status_code == 201, resp.text
        item_id = resp.json()["items"][0]["id"]
        assert _top_hit(writer.url, n) == item_id  # the acknowledging replica
        assert _top_hit(reader.url, n) == item_id  # the other's next search: no wait
        served = httpx.get(f"{reader.url}{API}/images/{item_id}/file", timeout=30)
        assert served.status_code == 200 and served.content == scene(n)[0]
    again = _upload(b.url, 0)  # the same bytes on the other replica: one item
    assert again.status_code == 201 and again.json()["items"][0]["duplicate"] is True


def test_a_delete_on_one_replica_is_gone_from_the_other(replicas: Pair) -> None:
    a, b, _ = replicas
    resp = _upload(a.url, 100)
    assert resp.status_code == 201, resp.text
    item_id = resp.json()["items"][0]["id"]
    _lag(b.url, 100, item_id)
    assert httpx.delete(f"{b.url}{API}/images/{item_id}", timeout=60).status_code == 200
    assert httpx.get(f"{a.url}{API}/images/{item_id}", timeout=30).status_code == 404
    listed = httpx.get(f"{a.url}{API}/images", params={"limit": 500}, timeout=30).json()
    assert item_id not in {item["id"] for item in listed["items"]}
    deadline = time.monotonic() + LAG_BOUND_S
    while _top_hit(a.url, 100) == item_id or (info := _info(a.url))["vectors"] != info["items"]:
        assert time.monotonic() < deadline, "the delete never reached the other replica's index"
        time.sleep(0.05)


def test_postgres_killed_under_load_answers_503_loses_nothing_and_recovers(
    replicas: Pair,
) -> None:
    a, b, cluster = replicas
    acked: dict[int, int] = {}  # scene -> id, answered 201
    statuses: Counter[int] = Counter()
    bad: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    scenes = itertools.count(1000)

    def client(url: str, searching: bool) -> None:
        while not stop.is_set():
            with lock:
                i = next(scenes)
            try:
                if searching:  # vector and keyword search, both reading the catalog
                    resp = httpx.post(f"{url}{API}/search/text", timeout=30, json={
                        "query": "a red circle", "k": 3, "mode": "hybrid"})
                else:
                    resp = _upload(url, i)
            except httpx.TransportError as exc:
                with lock:
                    bad.append(f"transport error from {url}: {exc!r}")
                continue
            with lock:
                statuses[resp.status_code] += 1
                if resp.status_code == 201:
                    acked[i] = resp.json()["items"][0]["id"]
                elif resp.status_code == 503:
                    if not resp.headers.get("retry-after") or \
                            resp.json()["error"]["code"] != "database_unavailable":
                        bad.append(f"503 without Retry-After/code: {resp.headers} {resp.text}")
                elif resp.status_code != 200:
                    bad.append(f"{resp.status_code}: {resp.text[:300]}")

    threads = [threading.Thread(target=client, args=(s.url, searching))
               for s in (a, b) for searching in (False, True)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(acked) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = len(acked)
        cluster.stop("immediate")
        down_at = time.monotonic()
        while statuses[503] < 4 and time.monotonic() - down_at < 60:
            time.sleep(0.05)
        outage = dict(statuses)
        cluster.start()
        up_at = time.monotonic()
        while len(acked) < before + 6 and time.monotonic() - up_at < 120:
            time.sleep(0.05)
        recovered_s = time.monotonic() - up_at
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not bad, bad[:5]
    assert outage.get(503, 0) >= 4, outage
    assert len(acked) >= before + 6, f"no recovery: {dict(statuses)}"
    # both replicas serve again without a restart, and every acknowledged upload is kept
    listed = httpx.get(f"{a.url}{API}/images", params={"limit": 500}, timeout=30).json()
    assert set(acked.values()) <= {item["id"] for item in listed["items"]}
    for server in (a, b):
        for i, item_id in sorted(acked.items())[-6:]:
            assert _lag(server.url, i, item_id) < LAG_BOUND_S
    record("pg_restart", {"statuses": dict(statuses), "acknowledged": len(acked),
                          "recovered_s": round(recovered_s, 2)})
    print(f"PostgreSQL restart under load: {dict(statuses)}, recovered in {recovered_s:.1f} s")
