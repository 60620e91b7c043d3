"""Fixtures for index tests: deterministic fake uploads and stores in tmp_path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from index import Item, Store, Upload

DIM = 16
MODEL = "test-model"

# These tests run on a few shared cores; FAISS's OpenMP threads spin-wait and run many times
# slower when the cores are busy, while the test collections are far too small to gain from them.
faiss.omp_set_num_threads(1)


def unit_vector(seed: int, dim: int = DIM) -> np.ndarray:
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


def upload(i: int, tags: Sequence[str] = (), dim: int = DIM) -> Upload:
    data = f"image bytes #{i}".encode()
    return Upload(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        ext="png",
        content_type="image/png",
        embedding=unit_vector(i, dim),
        tokens=np.random.default_rng(10_000 + i).standard_normal((4, 6)).astype(np.float16),
        width=8,
        height=8,
        original_name=f"photo-{i}.png",
        caption=f"caption {i}",
        tags=tags,
    )


def add(store: Store, up: Upload) -> tuple[Item, bool]:
    return store.add(
        up.data,
        sha256=up.sha256,
        ext=up.ext,
        content_type=up.content_type,
        embedding=up.embedding,
        tokens=up.tokens,
        width=up.width,
        height=up.height,
        original_name=up.original_name,
        caption=up.caption,
        tags=up.tags,
    )


@pytest.fixture
def make_upload() -> Callable[..., Upload]:
    return upload


@pytest.fixture
def add_one() -> Callable[[Store, Upload], tuple[Item, bool]]:
    return add


@pytest.fixture
def vec() -> Callable[..., np.ndarray]:
    return unit_vector


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """Open stores on ``tmp_path/data`` (or a given dir); all are closed at teardown."""
    opened: list[Store] = []

    def _open(data_dir: Path | None = None, **kwargs: Any) -> Store:
        kwargs.setdefault("dim", DIM)
        kwargs.setdefault("model_name", MODEL)
        store = Store.open(data_dir or tmp_path / "data", **kwargs)
        opened.append(store)
        return store

    yield _open
    for store in reversed(opened):
        store.close()
