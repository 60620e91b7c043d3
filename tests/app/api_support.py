"""Helpers for the API tests: real images from the synthetic world, uploads, error checks."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from http_checks import NotReady, free_port, wait_ready
from PIL import Image

from app.main import create_app
from app.settings import Settings
from models import synthetic as syn

API = "/api/v1"


@dataclass
class Gallery:
    """A shared, read-only collection: scenes 0..29 with their captions, 2 without."""

    client: TestClient
    items: dict[int, dict[str, Any]] = field(default_factory=dict)  # scene index -> item

    @property
    def size(self) -> int:
        return len(self.items)

    def id_of(self, scene_index: int) -> int:
        return int(self.items[scene_index]["id"])


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test app: no .env file, this data dir, the given overrides."""
    # One torch thread: on shared busy cores, OpenMP workers spin and slow everything down.
    overrides.setdefault("torch_threads", 1)
    return Settings(_env_file=None, data_dir=data_dir, **overrides)  # type: ignore[call-arg]


class Apps:
    """Starts apps (lifespan and all) on data dirs; stops whatever is left at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._running: list[TestClient] = []

    def start(self, data_dir: Path | None = None, **overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(data_dir or self.root / "data", **overrides)))
        client.__enter__()
        self._running.append(client)
        return client

    def stop(self, client: TestClient) -> None:
        """Shut the app down as a server would (lifespan exit: snapshot, close, unlock)."""
        self._running.remove(client)
        client.__exit__(None, None, None)

    def stop_all(self) -> None:
        while self._running:
            self.stop(self._running[-1])


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@lru_cache(maxsize=256)
def scene(i: int, split: str = "test") -> syn.Example:
    """The ``i``-th synthetic scene (64x64) with a caption that is true of it."""
    return syn.example(split, i, size=64)


@lru_cache(maxsize=256)
def scene_png(i: int, split: str = "test") -> bytes:
    return encode(scene(i, split).image)


def noise_png(side: int, seed: int = 0) -> bytes:
    """A PNG that barely compresses: about 3 * side**2 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels))


def part(data: bytes, name: str = "image.png", ctype: str = "image/png",
         field: str = "files") -> tuple[str, tuple[str, bytes, str]]:
    return field, (name, data, ctype)


def upload(client: TestClient, *files: bytes, caption: str | None = None,
           tags: Sequence[str] = (), headers: dict[str, str] | None = None,
           expect: int = 201) -> list[dict[str, Any]]:
    """POST the files as repeated ``files`` parts; returns the items of the 201 answer."""
    data: dict[str, Any] = {}
    if caption is not None:
        data["caption"] = caption
    if tags:
        data["tags"] = list(tags)
    resp = client.post(f"{API}/images", files=[part(f, f"img{i}.png") for i, f in enumerate(files)],
                       data=data, headers=headers or {})
    assert resp.status_code == expect, resp.text
    return resp.json()["items"] if expect == 201 else []


def upload_scene(client: TestClient, i: int, *, tags: Sequence[str] = (),
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Upload scene ``i`` with its own caption; returns the stored item."""
    (item,) = upload(client, scene_png(i), caption=scene(i).caption, tags=tags, headers=headers)
    return item


def search_text(client: TestClient, query: str, **body: Any) -> dict[str, Any]:
    resp = client.post(f"{API}/search/text", json={"query": query, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def search_file(client: TestClient, data: bytes, **fields: Any) -> dict[str, Any]:
    resp = client.post(f"{API}/search/image", files={"file": ("q.png", data, "image/png")},
                       data={k: str(v) for k, v in fields.items()})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def hit_ids(results: dict[str, Any]) -> list[int]:
    return [h["id"] for h in results["hits"]]


def cli_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m app.cli``."""
    script = Path(sys.executable).with_name("fusion-search")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app.cli"]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment without any FUSION_* setting, offline, on few threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               FUSION_TORCH_THREADS="1")
    env.update(extra)
    return env


# Generous: start-up imports torch, and these cores are shared with other work.
START_TIMEOUT_S = 300
PORT_TRIES = 5


class Server:
    """One `fusion-search serve` process over ``data_dir``, as an operator starts it."""

    def __init__(self, data_dir: Path, log: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.log = log
        self.env = subprocess_env(FUSION_DATA_DIR=str(data_dir),
                                  FUSION_SNAPSHOT_EVERY="100000", **env)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start and wait for /ready. The port was free a moment ago; when another process took
        it meanwhile the server exits at once, and the start is retried on a new port.

        Raises AssertionError (with the log) when it cannot start."""
        for _ in range(PORT_TRIES):
            self.port = free_port()
            with self.log.open("ab") as out:
                out.write(f"\n==== port {self.port}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(
                    [*cli_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                     "--log-level", "warning"],
                    cwd=self.data_dir.parent, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                )
            try:
                wait_ready(self.proc, self.url, START_TIMEOUT_S)
                return
            except NotReady:
                self.kill()
            if "address already in use" not in self.log.read_text(errors="replace").lower():
                break
        raise AssertionError(f"server did not start:\n{self.log.read_text(errors='replace')}")

    def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=120)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)


@contextlib.contextmanager
def serve(data_dir: Path, log: Path, **env: str) -> Iterator[Server]:
    """A started server that is killed on the way out, whatever happened."""
    server = Server(data_dir, log, **env)
    try:
        server.start()
        yield server
    finally:
        server.kill()
