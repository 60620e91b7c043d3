"""Fixtures for the API tests: real apps (model, SQLite, FAISS) on data dirs in tmp_path."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import faiss
import pytest
from api_support import Apps, Gallery, make_settings, scene_png, upload, upload_scene
from fastapi.testclient import TestClient

from app.main import create_app

# FAISS's OpenMP threads spin-wait and crawl on busy shared cores; the collections here are tiny.
faiss.omp_set_num_threads(1)

GALLERY_CAPTIONED = 30
GALLERY_UNCAPTIONED = 2


@pytest.fixture(scope="session", autouse=True)
def _no_fusion_env() -> Iterator[None]:
    """Settings come only from what each test passes, never from the caller's FUSION_* vars."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("FUSION_")}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _load_each_model_once() -> Iterator[None]:
    """Apps started in this process share one loaded model per set of load arguments.

    Loading is the real ``models.load_model``; only repeating it is skipped. It also keeps an
    untrained model the same across in-process restarts, as bundled weights would: without
    weights each load draws new random ones from torch's global generator.
    """
    import app.main

    cached = functools.cache(app.main.load_model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app.main, "load_model", cached)
        yield
    cached.cache_clear()


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    manager = Apps(tmp_path)
    yield manager
    manager.stop_all()


@pytest.fixture
def client(apps: Apps) -> TestClient:
    """A fresh app on an empty data dir of its own."""
    return apps.start()


@pytest.fixture(scope="session")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gallery]:
    """Tests that use it must not change it (no uploads that succeed, no deletes)."""
    data_dir = tmp_path_factory.mktemp("gallery")
    with TestClient(create_app(make_settings(data_dir))) as test_client:
        shared = Gallery(test_client)
        for i in range(GALLERY_CAPTIONED):
            tags = ["gallery", "even" if i % 2 == 0 else "odd"]
            shared.items[i] = upload_scene(test_client, i, tags=tags)
        for i in range(GALLERY_CAPTIONED, GALLERY_CAPTIONED + GALLERY_UNCAPTIONED):
            (shared.items[i],) = upload(test_client, scene_png(i), tags=["gallery", "nocaption"])
        yield shared
