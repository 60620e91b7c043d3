"""Seed an empty catalog with generated scenes so a first visitor can search at once."""

from __future__ import annotations

import io
import logging

from tqdm import tqdm

from models import decode_image
from models import synthetic as syn

from .service import SearchService

log = logging.getLogger(__name__)

DEMO_SPLIT = "val"
DEMO_IMAGE_SIZE = 128


def demo_tags(scene: syn.Scene) -> list[str]:
    """Tags a person might have given: the shapes, colours and background in the scene."""
    tags = {"demo", scene.background}
    for obj in scene.objects:
        tags.update((obj.shape, obj.color))
    return sorted(tags)


def seed_demo(service: SearchService, n: int, batch: int = 64) -> int:
    """Add ``n`` generated scenes with captions and tags; returns how many were new."""
    added = 0
    for start in tqdm(range(0, n, batch), desc="demo scenes", unit="batch"):
        records = []
        for i in range(start, min(n, start + batch)):
            ex = syn.example(DEMO_SPLIT, i, size=DEMO_IMAGE_SIZE)
            buf = io.BytesIO()
            ex.image.save(buf, format="PNG")
            data = buf.getvalue()
            records.append((data, decode_image(data), f"scene_{i:05d}.png", ex.caption,
                            demo_tags(ex.scene)))
        added += sum(1 for _, dup in service.store_decoded(records) if not dup)
    log.info("seeded %d demo scenes", added)
    return added
