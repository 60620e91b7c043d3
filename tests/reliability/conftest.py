"""Fixtures for the reliability tests: real uvicorn processes and in-process apps on temp dirs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import faiss
import pytest
from fastapi.testclient import TestClient
from reliability_support import SETTING_VARS, LiveServer, make_settings

from app.main import create_app

# FAISS's OpenMP threads spin-wait and crawl on busy shared cores; the collections here are tiny.
faiss.omp_set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _no_fusion_settings() -> Iterator[None]:
    """Apps here get their settings from the test, never from the caller's environment."""
    saved = {k: v for k, v in os.environ.items() if k in SETTING_VARS}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One uvicorn process shared by the tests that only need a running server."""
    root = tmp_path_factory.mktemp("live")
    server = LiveServer(root / "data", root / "server.log")
    server.start()
    yield server
    if server.alive():
        server.stop()


@pytest.fixture(scope="module")
def asgi_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An in-process app (lifespan and all) on its own data dir, shared by one module."""
    data_dir = tmp_path_factory.mktemp("asgi") / "data"
    with TestClient(create_app(make_settings(data_dir))) as client:
        yield client
