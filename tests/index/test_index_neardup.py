"""The near-duplicate test on real rendered scenes: edited copies pass, re-staged scenes do not."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from PIL import Image, ImageEnhance

from index.neardup import DUPLICATE_THRESHOLD, signature, similarity
from models import synthetic as syn

SIDE = 192


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


EDITS = {
    "jpeg": lambda im: _jpeg(im, 50),
    "smaller": lambda im: im.resize((SIDE // 3, SIDE // 3), Image.Resampling.LANCZOS),
    "crop": lambda im: im.crop((12, 12, SIDE - 12, SIDE - 12)),
    "crop-one-side": lambda im: im.crop((18, 0, SIDE, SIDE)),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "grey-mode": lambda im: im.convert("RGBA"),
}


@pytest.mark.parametrize("i", [3, 8, 21])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_copies_are_near_duplicates(i: int, edit: str) -> None:
    original = syn.example("test", i, size=SIDE).image
    sim = similarity(signature(original), signature(EDITS[edit](original)))
    assert DUPLICATE_THRESHOLD <= sim <= 1.0 + 1e-6


@pytest.mark.parametrize("i", [3, 8, 21])
def test_the_same_scene_staged_elsewhere_is_not(i: int) -> None:
    ex = syn.example("test", i, size=SIDE)
    moved = replace(ex.scene, objects=tuple(replace(o, x=1 - o.x, y=1 - o.y)
                                            for o in ex.scene.objects))
    other = syn.example("test", i + 100, size=SIDE).image
    mine = signature(ex.image)
    assert similarity(mine, signature(syn.render(moved, SIDE))) < DUPLICATE_THRESHOLD
    assert similarity(mine, signature(other)) < DUPLICATE_THRESHOLD


def test_similarity_is_symmetric_and_one_for_the_same_pixels() -> None:
    a = signature(syn.example("test", 5, size=SIDE).image)
    b = signature(syn.example("test", 6, size=SIDE).image)
    assert similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert similarity(a, b) == pytest.approx(similarity(b, a))
