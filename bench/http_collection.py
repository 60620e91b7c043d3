"""The HTTP benchmark's collection: synthetic items bulk-loaded straight into a data dir through
``Store.add_many`` (random unit embeddings, random float16 patch tokens, small unique PNGs), so
100k items need no image encoding."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from index import Store, Upload

TAGS = ("red", "green", "blue", "indoor", "outdoor", "large", "small")
_LOAD_BATCH = 1000


def png_bytes(i: int, size: int = 8, seed: int = 0) -> bytes:
    """A small PNG that differs for every ``i``."""
    rng = np.random.default_rng([seed, i])
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def bulk_load(data_dir: Path, n: int, dim: int, tokens: tuple[int, int] | None, model_name: str,
              captions: Sequence[str]) -> dict[str, Any]:
    """Fill a data dir with ``n`` synthetic items through Store.add_many (with random patch
    tokens of shape ``tokens``, or none); returns the seconds it took and the index type.

    The rows go into a Flat index, then the index type the server would choose is built once
    over all of them, as a server's start does, instead of rebuilding it at every threshold
    the growing collection crosses under ``auto``."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with Store.open(data_dir, dim=dim, model_name=model_name, factory="Flat",
                    snapshot_every=10**9) as store:
        for start in tqdm(range(0, n, _LOAD_BATCH), desc=f"bulk load {n:,}", leave=False):
            count = min(_LOAD_BATCH, n - start)
            emb = rng.standard_normal((count, dim), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            tok = (rng.standard_normal((count, *tokens), dtype=np.float32).astype(np.float16)
                   if tokens else None)
            uploads = []
            for j in range(count):
                data = png_bytes(start + j)
                uploads.append(Upload(
                    data=data, sha256=hashlib.sha256(data).hexdigest(), ext="png",
                    content_type="image/png", embedding=emb[j],
                    tokens=tok[j] if tok is not None else None, width=8,
                    height=8, caption=captions[(start + j) % len(captions)],
                    tags=[TAGS[(start + j) % len(TAGS)]]))
            store.add_many(uploads)
    with Store.open(data_dir, dim=dim, model_name=model_name, snapshot_every=10**9) as store:
        factory = store.stats()["factory"]  # built and snapshotted by this open
    return {"load_s": time.perf_counter() - t0, "factory": factory}


def load_with_tokens(data_dir: Path, n: int, model: Any, captions: Sequence[str]
                     ) -> tuple[dict[str, Any], int, int]:
    """``bulk_load`` with random patch tokens of ``model``'s shape: its result, the bytes the
    data dir then holds and the bytes of patch tokens among them."""
    tokens = (model.num_image_tokens, model.image_token_width)
    loaded = bulk_load(data_dir, n, model.embed_dim, tokens, model.name, captions)
    return loaded, dir_bytes(data_dir), n * tokens[0] * tokens[1] * 2


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
