"""Training augmentations (domain randomisation, noisy captions): claims kept, deterministic."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from claim_parser import ClaimParser, canonical

from models import synthetic as syn
from models.synthetic.ood_phrasing import phrase_ood
from models.synthetic.randomise import noisy_caption, randomise_image
from models.synthetic.render import COLOR_RGB
from models.synthetic.render_random import (
    RANDOM_SCALE,
    object_rgb,
    randomised_layout,
    render_randomised,
)
from models.synthetic.sampling import SCALE_RANGE
from models.train import TrainConfig, render_pool


def test_randomised_pools_are_deterministic_and_apart_from_the_plain_one(tmp_path: Path) -> None:
    cfg = TrainConfig()  # the bundled recipe: a plain phase, then randomised (model card)
    assert cfg.robust_steps > 0 and 0.0 < cfg.randomise < 1.0 and cfg.paraphrase > 0.0
    plain = render_pool(12, tmp_path, 32)
    ref = render_pool(12, tmp_path / "again", 32, randomise=0.0)
    assert np.array_equal(plain.pixels.numpy(), ref.pixels.numpy())
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["pool_12_32.npz"]
    mixed = render_pool(12, tmp_path, 32, randomise=1.0)
    assert (tmp_path / "pool_12_32_dr1.npz").is_file()  # never mistaken for the plain one
    # the same scene graphs (objects, relation, background), laid out anew
    assert [s.key() for s in mixed.scenes] == [s.key() for s in plain.scenes]
    moved = [a.objects[0].x != b.objects[0].x for a, b in zip(mixed.scenes, plain.scenes,
                                                               strict=True)]
    assert all(moved)
    changed = [not np.allclose(a, b) for a, b in zip(mixed.pixels.numpy(), plain.pixels.numpy(),
                                                     strict=True)]
    assert all(changed)
    again = render_pool(12, tmp_path / "third", 32, randomise=1.0)
    assert np.array_equal(again.pixels.numpy(), mixed.pixels.numpy())  # deterministic
    # loading the cached pool gives back the randomised layouts, not the plain ones
    cached = render_pool(12, tmp_path, 32, randomise=1.0)
    assert cached.scenes == mixed.scenes


def test_randomised_layouts_keep_the_claims_and_stay_unambiguous() -> None:
    rng = np.random.default_rng(7)
    small_hi, large_lo = RANDOM_SCALE["small"][1], RANDOM_SCALE["large"][0]
    assert small_hi < large_lo  # the size classes never meet
    for i in range(400):
        scene = syn.example("train", i, size=8).scene
        placed, scales = randomised_layout(scene, rng)
        assert placed.key() == scene.key()
        for o, sc in zip(placed.objects, scales, strict=True):
            lo, hi = RANDOM_SCALE[o.size]
            r = 0.62 * sc
            assert lo - 1e-9 <= sc <= hi + 1e-9 or sc == sum(SCALE_RANGE[o.size]) / 2
            assert r <= o.x <= 1 - r and r <= o.y <= 1 - r
        if len(placed.objects) == 2:
            a, b = placed.objects
            dx, dy = abs(a.x - b.x), abs(a.y - b.y)
            if (a.x, a.y) != (scene.objects[0].x, scene.objects[0].y):  # not the fallback
                assert max(dx, dy) >= 1.35 * min(dx, dy)


def test_randomised_colours_keep_their_names() -> None:
    rng = np.random.default_rng(3)
    for color, rgb in COLOR_RGB.items():
        for _ in range(200):
            got = np.array(object_rgb(color, rng), np.float64)
            h, s, v = colorsys.rgb_to_hsv(*(got / 255.0))
            if color == "white":
                assert v > 0.8 and s < 0.1
            elif color == "black":
                assert v < 0.2
            else:
                d = abs(h * 360 - _hue(np.array(rgb, np.float64)))
                assert min(d, 360 - d) < 14 and s > 0.5, (color, got)


def test_randomised_drawings_put_each_object_where_its_scene_says() -> None:
    rng = np.random.default_rng(5)
    checked = 0
    for i in range(60):
        scene = syn.example("train", i, size=8).scene
        if len(scene.objects) != 1 or scene.objects[0].color in ("white", "black"):
            continue
        placed, scales = randomised_layout(scene, rng)
        o = placed.objects[0]
        img = np.asarray(render_randomised(placed, scales, 96, rng), np.float64)
        target = np.array(COLOR_RGB[o.color], np.float64)
        near = np.linalg.norm(img - target, axis=-1) < 70
        ys, xs = np.nonzero(near)
        if len(xs) < 4:  # a thin stroke-only outline of a small object, blurred away
            continue
        assert abs(xs.mean() / 96 - o.x) < 0.08 and abs(ys.mean() / 96 - o.y) < 0.08
        checked += 1
    assert checked >= 10


def _hue(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(rgb / 255.0))[0] * 360


def test_randomised_images_keep_their_objects_colours() -> None:
    rng = np.random.default_rng(2)
    checked = 0
    for i in range(80):
        ex = syn.example("train", i, size=64)
        if len(ex.scene.objects) != 1 or ex.scene.objects[0].color in ("white", "black"):
            continue
        o = ex.scene.objects[0]
        x, y = int(o.x * 64), int(o.y * 64)
        before = np.asarray(ex.image, np.float64)[y - 1 : y + 2, x - 1 : x + 2].mean((0, 1))
        after_img = randomise_image(ex.image, rng)
        after = np.asarray(after_img, np.float64)[y - 1 : y + 2, x - 1 : x + 2].mean((0, 1))
        d = abs(_hue(before) - _hue(after))
        assert min(d, 360 - d) < 25, (o.color, before, after)
        checked += 1
    assert checked >= 20


def test_noisy_captions_say_the_same_claim() -> None:
    rng = np.random.default_rng(4)
    known = [syn.example("train", i, size=8).caption for i in range(3000)]
    known += [phrase_ood(syn.example("train", i, size=8).claim, rng, p_typo=0)[0]
              for i in range(3000)]
    parser = ClaimParser(known)
    changed = 0
    for i in range(400):
        ex = syn.example("val", i, size=8)
        noisy = noisy_caption(ex.caption, rng)
        changed += noisy != ex.caption
        assert canonical(parser.parse(noisy)) == canonical(ex.claim), (ex.caption, noisy)
    assert changed >= 200
