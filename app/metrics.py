"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "fusion_request_seconds", "HTTP request latency", ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12),
        )
        self.items = Gauge("fusion_items", "images in the catalog", registry=self.registry)
        self.vectors = Gauge("fusion_vectors", "vectors in the index", registry=self.registry)
        self.index_type = Gauge("fusion_index_info", "FAISS factory string in use", ["factory"],
                                registry=self.registry)
        self.errors = Counter("fusion_errors_total", "responses with status >= 500",
                              registry=self.registry)

    def render(self, stats: dict[str, object] | None) -> bytes:
        if stats:
            self.items.set(float(stats.get("count") or 0))  # type: ignore[arg-type]
            self.vectors.set(float(stats.get("vectors") or 0))  # type: ignore[arg-type]
            self.index_type.clear()
            self.index_type.labels(str(stats.get("factory"))).set(1)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every request by its route template (not its raw path, to bound cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - start)
            if status >= 500:
                self.metrics.errors.inc()
