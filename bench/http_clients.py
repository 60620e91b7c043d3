"""What the HTTP benchmark sends and the httpx driver: text searches (``Search``, which wrk
drives as well), uploads of unique PNGs, and closed-loop load from an async httpx client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .common import latency_stats
from .http_collection import png_bytes

SEARCH_PATH = "/api/v1/search/text"

Request = Callable[[Any, int], Awaitable[Any]]


async def drive(base: str, request: Request, concurrency: int, duration: float,
                warmup: float) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` clients for ``duration`` s after ``warmup`` s."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    lat: list[float] = []
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        counter = iter(range(10**12))

        async def worker(until: float, keep: bool) -> None:
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                try:
                    r = await request(client, next(counter))
                    ok, why = r.status_code < 300, str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, why = False, type(exc).__name__
                if keep and ok:
                    lat.append(time.perf_counter() - t0)
                elif keep:
                    errors[why] = errors.get(why, 0) + 1

        end = time.perf_counter() + warmup
        await asyncio.gather(*(worker(end, False) for _ in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(t0 + duration, True) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(lat), "rps": len(lat) / wall,
            "errors": sum(errors.values()), "error_kinds": errors, **latency_stats(lat)}


@dataclass(frozen=True)
class Search:
    """Text searches cycling through ``queries``: what either client sends."""

    queries: Sequence[str]
    rerank: bool

    def body(self, i: int) -> dict[str, Any]:
        return {"query": self.queries[i % len(self.queries)], "k": 10, "rerank": self.rerank}

    def httpx_request(self) -> Request:
        async def request(client: Any, i: int) -> Any:
            return await client.post(SEARCH_PATH, json=self.body(i))

        return request


def search_request(queries: Sequence[str], rerank: bool) -> Search:
    return Search(tuple(queries), rerank)


def upload_request(seed: int) -> Request:
    async def request(client: Any, i: int) -> Any:
        data = png_bytes(i, size=64, seed=seed)
        return await client.post("/api/v1/images",
                                 files=[("files", (f"u{i}.png", data, "image/png"))])

    return request
