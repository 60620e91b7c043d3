"""kill -9 a real server in the middle of concurrent uploads and searches, again and again.

The promise under test: an upload that was answered 2xx survives (file, row, vector, findable);
uploads that were never answered leave nothing behind but what start-up cleans; the catalog stays
consistent and the FAISS index matches it after every restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_support import API, LiveServer, record, scene

pytestmark = pytest.mark.slow

SNAPSHOT_EVERY = 5
UPLOADERS = 3
# What each cycle waits for before the SIGKILL: a random moment, the instant a FAISS snapshot is
# being written (its temp file exists), or right after an acknowledgement that reaches a multiple
# of SNAPSHOT_EVERY (the upload whose request wrote a snapshot).
PLAN = ("random", "snapshot", "random", "boundary", "snapshot", "random")
SNAPSHOT_WAIT_S = 8.0
MAX_ACKS_PER_CYCLE = 60
FIRST_ACK_WAIT_S = 60.0


@dataclass(frozen=True)
class Acked:
    item_id: int
    scene: int
    sha256: str
    caption: str


@dataclass
class Ledger:
    """What the clients saw, shared by their threads."""

    acked: dict[int, Acked] = field(default_factory=dict)
    five_xx: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unanswered: int = 0
    searches: int = 0
    cycle_acks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    scenes: itertools.count[int] = field(default_factory=itertools.count)

    def answer(self, what: str, resp: httpx.Response, ok: int) -> bool:
        with self.lock:
            if resp.status_code >= 500:
                self.five_xx.append(f"{what}: {resp.status_code} {resp.text[:200]}")
            elif resp.status_code != ok:
                self.unexpected.append(f"{what}: {resp.status_code} {resp.text[:200]}")
            return resp.status_code == ok

    def captions(self) -> list[str]:
        with self.lock:
            return [a.caption for a in self.acked.values()]


def _uploader(url: str, ledger: Ledger, stop: threading.Event,
              on_ack: Callable[[int], None]) -> None:
    with httpx.Client(base_url=url, timeout=60.0) as client:
        while not stop.is_set():
            i = next(ledger.scenes)
            data, caption = scene(i)
            try:
                resp = client.post(f"{API}/images", data={"caption": caption},
                                   files={"files": (f"scene{i}.png", data, "image/png")})
            except httpx.TransportError:  # the server died with this request in flight
                with ledger.lock:
                    ledger.unanswered += 1
                stop.wait(0.05)
                continue
            if ledger.answer(f"upload {i}", resp, 201):
                (item,) = resp.json()["items"]
                with ledger.lock:
                    ledger.acked[item["id"]] = Acked(item["id"], i, item["sha256"], caption)
                    ledger.cycle_acks += 1
                    count = ledger.cycle_acks
                on_ack(count)


def _searcher(url: str, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60.0) as client:
        while not stop.is_set():
            captions = ledger.captions()
            query = rng.choice(captions) if captions else "a red circle"
            try:
                resp = client.post(f"{API}/search/text", json={"query": query, "k": 5})
            except httpx.TransportError:
                stop.wait(0.05)
                continue
            ledger.answer("search", resp, 200)
            with ledger.lock:
                ledger.searches += 1


def _temps(folder: Path) -> list[Path]:
    return list(folder.rglob(".*.tmp"))


def _integrity(db: Path) -> str:
    """PRAGMA integrity_check through a read-only connection (the server may be running)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))


def _plant_orphans(data_dir: Path, n: int) -> list[Path]:
    """Files an interrupted upload could leave: a content-addressed file no row names, and temp
    files of unfinished writes (image and snapshot)."""
    data, _ = scene(10_000 + n, "val")  # never uploaded
    sha = hashlib.sha256(data).hexdigest()
    folder = data_dir / "files" / sha[:2] / sha[2:4]
    folder.mkdir(parents=True, exist_ok=True)
    orphan = folder / f"{sha}.png"
    orphan.write_bytes(data)
    temp = folder / f".{sha}.png.{n:012x}.tmp"
    temp.write_bytes(data[:100])
    snap_temp = data_dir / "index" / f".vectors.faiss.{n:012x}.tmp"
    snap_temp.write_bytes(b"half a snapshot")
    return [orphan, temp, snap_temp]


def _info(url: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}{API}/info", timeout=30.0)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _run_cycle(server: LiveServer, ledger: Ledger, kind: str, rng: random.Random) -> dict[str, Any]:
    """Load the server, SIGKILL it as ``kind`` says; returns what happened."""
    stop = threading.Event()
    killed = threading.Event()
    pid = server.pid
    index_dir = server.data_dir / "index"
    ledger.cycle_acks = 0
    seen_temp: list[str] = []

    def kill_now() -> None:
        if not killed.is_set():
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def on_ack(count: int) -> None:
        if kind == "boundary" and count >= SNAPSHOT_EVERY and count % SNAPSHOT_EVERY == 0:
            kill_now()
        if count >= MAX_ACKS_PER_CYCLE:
            kill_now()

    threads = [threading.Thread(target=_uploader, args=(server.url, ledger, stop, on_ack))
               for _ in range(UPLOADERS)]
    threads.append(threading.Thread(target=_searcher,
                                    args=(server.url, ledger, stop, rng.randrange(1 << 30))))
    for t in threads:
        t.start()
    started = time.monotonic()
    # Kill only once this cycle has had acknowledgements to lose (a busy machine is slow).
    while not ledger.cycle_acks and time.monotonic() - started < FIRST_ACK_WAIT_S:
        time.sleep(0.01)
    if kind == "random":
        killed.wait(rng.uniform(0.2, 2.0))
    elif kind == "snapshot":
        # Watch the index folder; the snapshot's temp file exists from its open to its rename.
        while not killed.is_set() and time.monotonic() - started < SNAPSHOT_WAIT_S:
            with os.scandir(index_dir) as entries:
                names = [e.name for e in entries if e.name.endswith(".tmp")]
            if names:
                seen_temp.extend(names)
                kill_now()
            time.sleep(0)
    else:
        killed.wait(SNAPSHOT_WAIT_S)
    kill_now()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    server.kill()
    left = [p.name for p in _temps(index_dir)]
    return {"kind": kind, "acks": ledger.cycle_acks,
            "seconds": round(time.monotonic() - started, 2),
            "snapshot_temp_seen": bool(seen_temp), "snapshot_temp_left": bool(left)}


def _verify_all(server: LiveServer, ledger: Ledger) -> dict[str, int]:
    """Every acknowledged upload: row, file (same bytes), vector, found by its caption."""
    info = _info(server.url)
    total = info["items"]
    assert info["vectors"] == total, info
    assert total >= len(ledger.acked)
    files_dir = server.data_dir / "files"

    def check(acked: Acked) -> bool:
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            resp = client.get(f"{API}/images/{acked.item_id}")
            assert resp.status_code == 200, (acked, resp.text)
            assert resp.json()["sha256"] == acked.sha256
            stored = files_dir / acked.sha256[:2] / acked.sha256[2:4] / f"{acked.sha256}.png"
            assert stored.is_file(), stored
            resp = client.get(f"{API}/images/{acked.item_id}/file")
            assert resp.status_code == 200
            assert hashlib.sha256(resp.content).hexdigest() == acked.sha256
            resp = client.post(f"{API}/search/text",
                               json={"query": acked.caption, "k": total, "rerank": False})
            assert resp.status_code == 200, resp.text
            return acked.item_id in {h["id"] for h in resp.json()["hits"]}

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = list(pool.map(check, ledger.acked.values()))
    missing = [a for a, ok in zip(ledger.acked.values(), found, strict=True) if not ok]
    assert not missing, f"acknowledged but not found by their captions: {missing[:5]}"
    return {"items": total, "vectors": info["vectors"], "found": sum(found)}


def test_acknowledged_uploads_survive_repeated_kill_9(tmp_path: Path) -> None:
    seed = int(os.environ.get("FUSION_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    server = LiveServer(tmp_path / "data", tmp_path / "server.log",
                        FUSION_SNAPSHOT_EVERY=str(SNAPSHOT_EVERY))
    ledger = Ledger()
    cycles: list[dict[str, Any]] = []
    planted: list[Path] = []
    t0 = time.monotonic()
    try:
        server.start()
        for n, kind in enumerate(PLAN):
            cycle = _run_cycle(server, ledger, kind, rng)
            db = server.data_dir / "catalog.sqlite3"
            cycle["integrity_after_kill"] = _integrity(db)
            assert cycle["integrity_after_kill"] == "ok", cycle
            planted = _plant_orphans(server.data_dir, n)
            cycles.append(cycle)

            server.start()  # start-up cleans orphans and temps, replays or rebuilds the index
            assert not [p for p in planted if p.exists()], "start-up left orphans or temp files"
            assert not _temps(server.data_dir / "index")
            info = _info(server.url)
            assert info["vectors"] == info["items"] >= len(ledger.acked), (info, cycle)

        assert sum(c["snapshot_temp_left"] or c["kind"] == "boundary" for c in cycles) >= 1
        result = _verify_all(server, ledger)
        assert _integrity(server.data_dir / "catalog.sqlite3") == "ok"
        # uvicorn re-raises the SIGTERM it handled after a graceful shutdown
        assert server.stop() in (0, -signal.SIGTERM)
        assert _integrity(server.data_dir / "catalog.sqlite3") == "ok"
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        server.kill()
    summary = {
        "seed": seed,
        "cycles": len(cycles),
        "kills_mid_snapshot": sum(c["snapshot_temp_left"] for c in cycles),
        "acknowledged": len(ledger.acked),
        "found": result["found"],
        "items_after": result["items"],
        "vectors_after": result["vectors"],
        "unanswered_uploads": ledger.unanswered,
        "searches": ledger.searches,
        "five_xx": len(ledger.five_xx),
        "seconds": round(time.monotonic() - t0, 1),
        "per_cycle": cycles,
    }
    record("crash", summary)
    print(summary)
    assert not ledger.five_xx, ledger.five_xx[:5]
    assert not ledger.unexpected, ledger.unexpected[:5]
    assert result["found"] == len(ledger.acked) > 0
