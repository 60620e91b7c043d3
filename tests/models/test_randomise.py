"""Opt-in training augmentations: off by default, claims kept when on."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from claim_parser import ClaimParser, canonical

from models import synthetic as syn
from models.synthetic.ood_phrasing import phrase_ood
from models.synthetic.randomise import noisy_caption, randomise_image
from models.train import TrainConfig, render_pool


def test_the_bundled_recipe_leaves_them_off_and_its_pool_is_the_plain_renders(
        tmp_path: Path) -> None:
    cfg = TrainConfig()
    assert cfg.randomise == 0.0 and cfg.paraphrase == 0.0
    plain = render_pool(12, tmp_path, 32)
    ref = render_pool(12, tmp_path / "again", 32, randomise=0.0)
    assert np.array_equal(plain.pixels.numpy(), ref.pixels.numpy())
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["pool_12_32.npz"]
    mixed = render_pool(12, tmp_path, 32, randomise=1.0)
    assert (tmp_path / "pool_12_32_randomise1.npz").is_file()  # never mistaken for the plain one
    assert [s.key() for s in mixed.scenes] == [s.key() for s in plain.scenes]
    changed = [not np.allclose(a, b) for a, b in zip(mixed.pixels.numpy(), plain.pixels.numpy(),
                                                     strict=True)]
    assert sum(changed) >= 9  # each of five changes is drawn with probability one half
    again = render_pool(12, tmp_path / "third", 32, randomise=1.0)
    assert np.array_equal(again.pixels.numpy(), mixed.pixels.numpy())  # deterministic


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
