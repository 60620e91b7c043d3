"""Training data: the pre-rendered scene and triplet pools of the synthetic world (cached as
.npz), and the (image, caption) rows of one's own TSV."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from tqdm import tqdm

from . import synthetic as syn
from .synthetic.randomise import randomise_image
from .synthetic.render_random import randomised_example, randomised_layout


class ScenePool:
    """Pre-rendered training scenes as normalised tensors, plus their scene graphs."""

    def __init__(self, pixels: torch.Tensor, scenes: list[syn.Scene]) -> None:
        self.pixels = pixels
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)


def _normalise(arr: np.ndarray) -> torch.Tensor:
    mean = np.asarray(open_clip.OPENAI_DATASET_MEAN, np.float32)
    std = np.asarray(open_clip.OPENAI_DATASET_STD, np.float32)
    x = (arr.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _randomised(i: int, randomise: float, salt: int = 0) -> bool:
    """Whether example ``i`` of a pool is drawn with domain randomisation (its own seed)."""
    rng = np.random.default_rng([syn.SPLIT_SEEDS["train"], i, 99 + salt])
    return bool(randomise) and rng.random() < randomise


def _rngs(i: int, salt: int) -> tuple[np.random.Generator, np.random.Generator,
                                        np.random.Generator]:
    seed = syn.SPLIT_SEEDS["train"]
    return (np.random.default_rng([seed, i, 98, salt]), np.random.default_rng([seed, i, 97, salt]),
            np.random.default_rng([seed, i, 96, salt]))


def _draw(scene: syn.Scene, i: int, size: int, salt: int = 0) -> tuple[Image.Image, syn.Scene]:
    """A randomised drawing of ``scene``: new layout and style, then (often) photometric noise."""
    layout, draw, photo = _rngs(i, salt)
    image, placed = randomised_example(scene, size, layout, draw)
    if photo.random() < 0.6:
        image = randomise_image(image, photo)
    return image, placed


def _pool_scene(i: int, randomise: float) -> syn.Scene:
    scene = syn.example("train", i, size=8).scene
    if _randomised(i, randomise):
        scene = randomised_layout(scene, _rngs(i, 0)[0])[0]
    return scene


def render_pool(n: int, cache: Path, size: int, randomise: float = 0.0) -> ScenePool:
    """Render (or load from cache) ``n`` training examples; a ``randomise`` share of them with
    domain randomisation (:mod:`models.synthetic.render_random`: free layout, wider scales, shape
    geometry, styles, backgrounds; then photometric noise). Each example's choice and drawing
    follow from its own seed, so a pool is the same every time."""
    path = cache / (f"pool_{n}_{size}.npz" if not randomise
                    else f"pool_{n}_{size}_dr{randomise:g}.npz")
    if path.is_file():
        arr = np.load(path)["pixels"]
        return ScenePool(_normalise(arr), [_pool_scene(i, randomise) for i in range(n)])
    arr = np.zeros((n, size, size, 3), np.uint8)
    scenes = []
    for i in tqdm(range(n), desc="render scenes", unit="img"):
        ex = syn.example("train", i, size=size)
        image, scene = ex.image, ex.scene
        if _randomised(i, randomise):
            image, scene = _draw(scene, i, size)
        arr[i] = np.asarray(image)
        scenes.append(scene)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, pixels=arr)
    return ScenePool(_normalise(arr), scenes)


@dataclass
class TripletPool:
    ref: torch.Tensor
    target: torch.Tensor
    texts: list[str]
    target_keys: list[Any]


def render_triplets(n: int, cache: Path, size: int, randomise: float = 0.0) -> TripletPool:
    """Render (or load from cache) ``n`` composed triplets; a ``randomise`` share with reference
    and target each drawn with domain randomisation (independently: only the scene graph is
    shared, as between two photos of one arrangement)."""
    path = cache / (f"triplets_{n}_{size}.npz" if not randomise
                    else f"triplets_{n}_{size}_dr{randomise:g}.npz")
    texts, keys = [], []
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        meta = json.loads(path.with_suffix(".json").read_text())
        return TripletPool(_normalise(data["ref"]), _normalise(data["target"]), meta["texts"],
                           [tuple(map(str, k)) for k in meta["keys"]])
    ref = np.zeros((n, size, size, 3), np.uint8)
    tgt = np.zeros_like(ref)
    for i in tqdm(range(n), desc="render triplets", unit="trip"):
        r_img, text, t_img, r_scene, t_scene, _kind = syn.triplet("train", i, size=size)
        if _randomised(i, randomise, salt=1):
            r_img = _draw(r_scene, i, size, salt=1)[0]
            t_img = _draw(t_scene, i, size, salt=2)[0]
        ref[i], tgt[i] = np.asarray(r_img), np.asarray(t_img)
        texts.append(text)
        keys.append(repr(t_scene.key()))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, ref=ref, target=tgt)
    path.with_suffix(".json").write_text(json.dumps({"texts": texts, "keys": keys}))
    return TripletPool(_normalise(ref), _normalise(tgt), texts, keys)



def read_pairs(tsv: Path) -> list[tuple[Path, str]]:
    """(image path, caption) rows of a TSV with ``filepath`` and ``title`` columns."""
    import csv

    rows = []
    with tsv.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            fp = Path(row["filepath"])
            if row.get("title"):
                rows.append((fp if fp.is_absolute() else tsv.parent / fp, row["title"]))
    if len(rows) < 8:
        raise ValueError(f"{tsv}: needs at least 8 rows with filepath and title")
    return rows
