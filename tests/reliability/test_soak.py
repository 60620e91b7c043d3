"""A short soak: uploads, deletes and every kind of search at once against a real server.

No 5xx, no crash, and once a delete is acknowledged no later search returns that item.
FUSION_SOAK_SECONDS sets the duration (default 15; the benchmark runs 60).
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from reliability_support import API, LiveServer, record, scene

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("FUSION_SOAK_SECONDS", "15"))
SEED_ITEMS = 12


@dataclass
class World:
    """What the clients know, shared by their threads."""

    live: set[int] = field(default_factory=set)
    deleted_at: dict[int, float] = field(default_factory=dict)  # id -> when the 2xx arrived
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    scenes: itertools.count[int] = field(default_factory=lambda: itertools.count(20_000))

    def pick(self, rng: random.Random) -> int | None:
        with self.lock:
            return rng.choice(sorted(self.live)) if self.live else None

    def note(self, kind: str, resp: httpx.Response, allowed: tuple[int, ...]) -> None:
        with self.lock:
            self.statuses[f"{kind} {resp.status_code}"] += 1
            if resp.status_code not in allowed:
                self.failures.append(f"{kind}: {resp.status_code} {resp.text[:200]}")

    def check_hits(self, kind: str, started: float, resp: httpx.Response) -> None:
        """No hit may be an item whose delete was acknowledged before this search started."""
        if resp.status_code != 200:
            return
        with self.lock:
            stale = [h["id"] for h in resp.json()["hits"]
                     if self.deleted_at.get(h["id"], float("inf")) < started]
            if stale:
                self.failures.append(f"{kind} returned deleted items {stale}")


def _uploader(c: httpx.Client, w: World, rng: random.Random) -> None:
    i = next(w.scenes)
    data, caption = scene(i)
    resp = c.post(f"{API}/images", files={"files": (f"s{i}.png", data, "image/png")},
                  data={"caption": caption, "tags": rng.choice(["a", "b"])})
    w.note("upload", resp, (201,))
    if resp.status_code == 201:
        with w.lock:
            w.live.update(it["id"] for it in resp.json()["items"])


def _deleter(c: httpx.Client, w: World, rng: random.Random) -> None:
    with w.lock:
        if len(w.live) <= SEED_ITEMS // 2:
            return
        victim = rng.choice(sorted(w.live))
        w.live.discard(victim)
    resp = c.delete(f"{API}/images/{victim}")
    w.note("delete", resp, (200,))
    if resp.status_code == 200:
        with w.lock:
            w.deleted_at[victim] = time.monotonic()


def _text(c: httpx.Client, w: World, rng: random.Random) -> None:
    started = time.monotonic()
    body: dict[str, object] = {"query": scene(rng.randrange(SEED_ITEMS))[1],
                               "k": rng.choice([1, 5, 50])}
    if rng.random() < 0.3:
        body["tags"] = [rng.choice(["a", "b"])]
    resp = c.post(f"{API}/search/text", json=body)
    w.note("text", resp, (200,))
    w.check_hits("text", started, resp)


def _image(c: httpx.Client, w: World, rng: random.Random) -> None:
    started = time.monotonic()
    target = rng.choice(["images", "captions"])
    if rng.random() < 0.5 and (ref := w.pick(rng)) is not None:
        # the reference may be deleted meanwhile: 404 is then the right answer
        resp = c.post(f"{API}/search/image", json={"image_id": ref, "k": 10, "target": target})
        w.note("image-by-id", resp, (200, 404))
    else:
        data, _ = scene(rng.randrange(500))
        resp = c.post(f"{API}/search/image", files={"file": ("q.png", data, "image/png")},
                      data={"k": "10", "target": target})
        w.note("image-by-file", resp, (200,))
    w.check_hits("image", started, resp)


def _composed(c: httpx.Client, w: World, rng: random.Random) -> None:
    started = time.monotonic()
    text = rng.choice(["the same but blue", "make the circle larger", "add a red star"])
    if rng.random() < 0.5 and (ref := w.pick(rng)) is not None:
        resp = c.post(f"{API}/search/composed", json={"image_id": ref, "text": text, "k": 10})
        w.note("composed-by-id", resp, (200, 404))
    else:
        data, _ = scene(rng.randrange(500))
        resp = c.post(f"{API}/search/composed", files={"file": ("q.png", data, "image/png")},
                      data={"text": text, "k": "10"})
        w.note("composed-by-file", resp, (200,))
    w.check_hits("composed", started, resp)


def _worker(url: str, w: World, step: Callable[[httpx.Client, World, random.Random], None],
            seed: int, until: float) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60.0) as client:
        while time.monotonic() < until:
            try:
                step(client, w, rng)
            except Exception as exc:  # a dropped connection or a bad body is a failure too
                with w.lock:
                    w.failures.append(f"{step.__name__}: {exc!r}")


def test_concurrent_soak(live_server: LiveServer) -> None:
    world = World()
    with httpx.Client(base_url=live_server.url, timeout=60.0) as client:
        for i in range(SEED_ITEMS):
            data, caption = scene(i)
            resp = client.post(f"{API}/images", files={"files": ("s.png", data, "image/png")},
                               data={"caption": caption})
            assert resp.status_code == 201, resp.text
            world.live.update(it["id"] for it in resp.json()["items"])

    until = time.monotonic() + SOAK_SECONDS
    steps = [_uploader, _uploader, _deleter, _text, _text, _image, _composed]
    threads = [threading.Thread(target=_worker, args=(live_server.url, world, step, n, until))
               for n, step in enumerate(steps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SOAK_SECONDS + 120)
    assert live_server.alive(), live_server.log_tail()

    with httpx.Client(base_url=live_server.url, timeout=60.0) as client:
        info = client.get(f"{API}/info").json()
        assert info["items"] == info["vectors"], info
        for item_id in world.deleted_at:
            assert client.get(f"{API}/images/{item_id}").status_code == 404
        everything = client.post(f"{API}/search/text", json={
            "query": "a shape", "k": min(1000, info["items"] + 5), "rerank": False}).json()
        returned = {h["id"] for h in everything["hits"]}
        assert not returned & set(world.deleted_at)
        assert world.live <= returned

    summary = {
        "seconds": SOAK_SECONDS,
        "requests": sum(world.statuses.values()),
        "deleted": len(world.deleted_at),
        "five_xx": sum(n for k, n in world.statuses.items() if k.split()[-1].startswith("5")),
        "statuses": dict(sorted(world.statuses.items())),
        "failures": len(world.failures),
    }
    record("soak", summary)
    print(summary)
    assert not world.failures, world.failures[:10]
    assert summary["five_xx"] == 0
    assert world.deleted_at and summary["requests"] > len(steps)
