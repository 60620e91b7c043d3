"""kill -9 a real server in the middle of concurrent uploads, deletes and searches, again and again.

The promise under test: an upload that was answered 2xx survives (file, row, vector, found by its
own image); a delete that was answered is never undone; an upload that was never answered either
stored its image once or not at all, and sending it again says which (``duplicate``); the catalog
stays consistent and the FAISS index matches it after every restart. The ledger is kept by
sha256, not by id: SQLite may hand an id out again after a kill, which would hide a lost row.
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
# being written (its temp file exists), right after an acknowledgement that reaches a multiple
# of SNAPSHOT_EVERY (the upload whose request wrote a snapshot), or while deletes run flat out.
PLAN = ("random", "snapshot", "delete", "boundary", "snapshot", "random")
# A "snapshot" or "delete" cycle is run again (after a restart) until its kill provably landed
# inside a snapshot write (the temp file outlived the process) or a delete (one went unanswered).
PROOF_TRIES = 6
SNAPSHOT_WAIT_S = 8.0
DELETE_PAUSE_S = 0.3  # between deletes, outside "delete" cycles
DELETE_KILL_DELAY_S = (0.0002, 0.002)  # after a delete request is sent, in "delete" cycles
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
    """What the clients saw, keyed by sha256, shared by their threads."""

    acked: dict[str, Acked] = field(default_factory=dict)  # answered 201, not deleted since
    deleted: set[str] = field(default_factory=set)  # delete answered 200
    unknown: set[str] = field(default_factory=set)  # delete sent, never answered
    unanswered: list[int] = field(default_factory=list)  # scene numbers of unanswered uploads
    unanswered_deletes: int = 0
    five_xx: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    searches: int = 0
    deletes: int = 0
    cycle_acks: int = 0
    cycle_deletes: int = 0
    cycle_unanswered_deletes: int = 0
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
                    ledger.unanswered.append(i)
                stop.wait(0.05)
                continue
            if ledger.answer(f"upload {i}", resp, 201):
                (item,) = resp.json()["items"]
                sha = hashlib.sha256(data).hexdigest()
                assert item["sha256"] == sha and item["duplicate"] is False, item
                with ledger.lock:
                    ledger.acked[sha] = Acked(item["id"], i, sha, caption)
                    ledger.cycle_acks += 1
                    count = ledger.cycle_acks
                on_ack(count)


def _deleter(url: str, ledger: Ledger, stop: threading.Event, seed: int, pause: float,
             on_send: Callable[[], None] | None = None) -> None:
    """Delete acknowledged items, one at a time; an unanswered delete may or may not have
    happened, so its item leaves both the must-exist and the must-be-gone sets. ``on_send`` runs
    just before each request goes out (a "delete" cycle arms its kill there)."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60.0) as client:
        while not stop.is_set():
            with ledger.lock:
                # keep most uploads: they are what the final checks look for
                shas = sorted(ledger.acked)[: max(0, len(ledger.acked) - 10)]
                victim = ledger.acked.pop(rng.choice(shas)) if shas else None
            if victim is None:
                stop.wait(0.05)
                continue
            if on_send is not None:
                on_send()
            try:
                resp = client.delete(f"{API}/images/{victim.item_id}")
            except httpx.TransportError as exc:
                with ledger.lock:
                    ledger.unknown.add(victim.sha256)
                    ledger.unanswered_deletes += 1
                    # a refused connection never reached the server: not a kill mid-delete
                    if not isinstance(exc, httpx.ConnectError):
                        ledger.cycle_unanswered_deletes += 1
                stop.wait(0.05)
                continue
            if ledger.answer(f"delete {victim.item_id}", resp, 200):
                assert resp.json()["sha256"] == victim.sha256, resp.text
                with ledger.lock:
                    ledger.deleted.add(victim.sha256)
                    ledger.deletes += 1
                    ledger.cycle_deletes += 1
            stop.wait(pause)


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
    ledger.cycle_acks = ledger.cycle_deletes = ledger.cycle_unanswered_deletes = 0
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
    pause = 0.0 if kind == "delete" else DELETE_PAUSE_S
    kill_delay = rng.uniform(*DELETE_KILL_DELAY_S)

    def on_delete_sent() -> None:
        # Kill a few milliseconds after a delete leaves, once some have been answered: the
        # server is then inside that request (parsing it, in its transaction, or removing the
        # vector and file), whatever the machine's speed.
        if kind == "delete" and ledger.cycle_deletes >= 3 and not killed.is_set():
            threading.Timer(kill_delay, kill_now).start()

    threads.append(threading.Thread(target=_deleter, args=(
        server.url, ledger, stop, rng.randrange(1 << 30), pause, on_delete_sent)))
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
    elif kind == "delete":
        killed.wait(SNAPSHOT_WAIT_S)  # the deleter's hook kills
    else:
        killed.wait(SNAPSHOT_WAIT_S)
    kill_now()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    server.kill()
    left = [p.name for p in _temps(index_dir)]
    return {"kind": kind, "acks": ledger.cycle_acks, "deletes": ledger.cycle_deletes,
            "seconds": round(time.monotonic() - started, 2),
            "snapshot_temp_seen": bool(seen_temp), "snapshot_temp_left": bool(left),
            "delete_in_flight": ledger.cycle_unanswered_deletes > 0}


def _proven(cycle: dict[str, Any]) -> bool:
    """Whether the kill landed where the cycle's kind aimed it."""
    if cycle["kind"] == "snapshot":
        return bool(cycle["snapshot_temp_left"])  # the process died between open and rename
    if cycle["kind"] == "delete":
        return bool(cycle["delete_in_flight"])
    return True


def _stored(url: str) -> dict[str, int]:
    """sha256 -> id of every stored item, from the listing; fails on a sha stored twice."""
    out: dict[str, int] = {}
    offset = 0
    with httpx.Client(base_url=url, timeout=60.0) as client:
        while True:
            page = client.get(f"{API}/images", params={"offset": offset, "limit": 500}).json()
            for item in page["items"]:
                assert item["sha256"] not in out, f"stored twice: {item}"
                out[item["sha256"]] = item["id"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return out


def _verify_all(server: LiveServer, ledger: Ledger) -> dict[str, int]:
    """Every acknowledged upload is stored (row, same bytes) and found first by its own image
    with a score of ~1; every acknowledged delete stays deleted."""
    info = _info(server.url)
    assert info["vectors"] == info["items"], info
    stored = _stored(server.url)
    assert len(stored) == info["items"]
    missing = [a for sha, a in ledger.acked.items() if sha not in stored]
    assert not missing, f"acknowledged but not stored: {missing[:5]}"
    undone = ledger.deleted & set(stored)
    assert not undone, f"deleted (answered 200) but back: {sorted(undone)[:5]}"
    files_dir = server.data_dir / "files"

    def check(acked: Acked) -> bool:
        data, _ = scene(acked.scene)
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            item_id = stored[acked.sha256]
            stored_file = files_dir / acked.sha256[:2] / acked.sha256[2:4] / f"{acked.sha256}.png"
            assert stored_file.is_file(), stored_file
            resp = client.get(f"{API}/images/{item_id}/file")
            assert resp.status_code == 200
            assert hashlib.sha256(resp.content).hexdigest() == acked.sha256
            resp = client.post(f"{API}/search/image", data={"k": "1"},
                               files={"file": ("q.png", data, "image/png")})
            assert resp.status_code == 200, resp.text
            (hit,) = resp.json()["hits"]
            return bool(hit["id"] == item_id and hit["score"] > 0.999)

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = list(pool.map(check, ledger.acked.values()))
    lost = [a for a, ok in zip(ledger.acked.values(), found, strict=True) if not ok]
    assert not lost, f"acknowledged but not found by their own image: {lost[:5]}"
    return {"items": info["items"], "vectors": info["vectors"], "found": sum(found)}


def _retry_unanswered(server: LiveServer, ledger: Ledger) -> dict[str, int]:
    """Send every unanswered upload again: one that was stored before the kill is answered as a
    duplicate of the stored item, one that was not is stored now; a second send is a duplicate."""
    before = _stored(server.url)
    counts = {"retried": 0, "were_stored": 0}
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        for i in ledger.unanswered:
            data, caption = scene(i)
            sha = hashlib.sha256(data).hexdigest()
            answers = []
            for _ in range(2):
                resp = client.post(f"{API}/images", data={"caption": caption},
                                   files={"files": (f"scene{i}.png", data, "image/png")})
                assert resp.status_code == 201, resp.text
                answers.append(resp.json()["items"][0])
            first, second = answers
            assert first["duplicate"] is (sha in before), (i, first, sha in before)
            if sha in before:
                assert first["id"] == before[sha]
            assert second["duplicate"] is True and second["id"] == first["id"], answers
            counts["retried"] += 1
            counts["were_stored"] += sha in before
    return counts


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
        for kind in PLAN:
            for attempt in range(PROOF_TRIES):
                cycle = _run_cycle(server, ledger, kind, rng)
                db = server.data_dir / "catalog.sqlite3"
                cycle["integrity_after_kill"] = _integrity(db)
                assert cycle["integrity_after_kill"] == "ok", cycle
                planted = _plant_orphans(server.data_dir, len(cycles))
                cycle["attempt"] = attempt
                cycles.append(cycle)

                server.start()  # start-up cleans orphans and temps, replays or rebuilds the index
                assert not [p for p in planted if p.exists()], "start-up left orphans or temps"
                assert not _temps(server.data_dir / "index")
                info = _info(server.url)
                assert info["vectors"] == info["items"] >= len(ledger.acked), (info, cycle)
                if _proven(cycle):
                    break
            else:
                raise AssertionError(f"no {kind!r} kill landed where aimed in {PROOF_TRIES} "
                                     f"tries: {cycles[-PROOF_TRIES:]}")

        assert any(c["kind"] == "snapshot" and c["snapshot_temp_left"] for c in cycles)
        assert any(c["kind"] == "delete" and c["delete_in_flight"] for c in cycles)
        result = _verify_all(server, ledger)
        retried = _retry_unanswered(server, ledger)
        assert _integrity(server.data_dir / "catalog.sqlite3") == "ok"
        # uvicorn re-raises the SIGTERM it handled after a graceful shutdown
        assert server.stop() in (0, -signal.SIGTERM)
        assert _integrity(server.data_dir / "catalog.sqlite3") == "ok"
        assert not ledger.five_xx, ledger.five_xx[:5]
        assert not ledger.unexpected, ledger.unexpected[:5]
        assert result["found"] == len(ledger.acked) > 0
    except BaseException:
        print(server.log_tail())
        print(f"crash test seed {seed}: rerun with FUSION_CRASH_SEED={seed}")
        raise
    finally:
        server.kill()
    summary = {
        "seed": seed,
        "cycles": len(cycles),
        "kills_mid_snapshot": sum(c["snapshot_temp_left"] for c in cycles),
        "kills_mid_delete": sum(c["delete_in_flight"] for c in cycles),
        "acknowledged": len(ledger.acked),
        "found": result["found"],
        "deleted": len(ledger.deleted),
        "items_after": result["items"],
        "vectors_after": result["vectors"],
        "unanswered_uploads": len(ledger.unanswered),
        "unanswered_uploads_that_were_stored": retried["were_stored"],
        "unanswered_deletes": ledger.unanswered_deletes,
        "searches": ledger.searches,
        "five_xx": len(ledger.five_xx),
        "seconds": round(time.monotonic() - t0, 1),
        "per_cycle": cycles,
    }
    record("crash", summary)
    print(summary)
