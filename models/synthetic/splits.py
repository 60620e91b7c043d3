"""Deterministic splits by seed: examples, triplets and a TSV data set for open_clip."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from .phrasing import caption
from .render import render
from .sampling import sample_scene
from .triplets import compose_triplet
from .world import HELDOUT_PAIRS, SPLIT_SEEDS, Example, Scene

# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _split_seed(split: str) -> int:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    return SPLIT_SEEDS[split]


def _has_heldout(scene: Scene) -> bool:
    return any(o.pair in HELDOUT_PAIRS for o in scene.objects)


def example(split: str, i: int, size: int = 64) -> Example:
    """The ``i``-th example of ``split``, deterministic and independent of every other index.

    train/val/test never contain a held-out (colour, shape) pair; every "heldout" scene does.
    """
    rng = np.random.default_rng([_split_seed(split), i])
    if split == "heldout":
        scene = sample_scene(rng, require_pair=True)
    else:
        scene = sample_scene(rng, exclude_pairs=HELDOUT_PAIRS)
    text, claim = caption(scene, rng)
    image = render(scene, size, rng)
    return Example(scene, image, text, claim)


def examples(split: str, n: int, start: int = 0, size: int = 64) -> list[Example]:
    """Examples ``start`` .. ``start + n - 1`` of ``split``."""
    return [example(split, k, size) for k in range(start, start + n)]


def triplet(
    split: str, i: int, size: int = 64
) -> tuple[Image.Image, str, Image.Image, Scene, Scene, str]:
    """The ``i``-th composed triplet of ``split``:
    ``(reference_image, text, target_image, reference_scene, target_scene, kind)``.

    Deterministic per index (stream ``[seed, i, 7]``). In train/val/test neither scene holds a
    held-out pair; in "heldout" the reference or the target (usually both) holds one.
    """
    rng = np.random.default_rng([_split_seed(split), i, 7])
    if split == "heldout":
        for _ in range(100):
            ref = sample_scene(rng, require_pair=bool(rng.random() < 0.5))
            ref, text, target, kind = compose_triplet(ref, rng)
            if _has_heldout(target) or _has_heldout(ref):
                break
        else:  # pragma: no cover - vanishingly unlikely
            raise RuntimeError("could not sample a held-out triplet")
    else:
        ref = sample_scene(rng, exclude_pairs=HELDOUT_PAIRS)
        ref, text, target, kind = compose_triplet(ref, rng, exclude_pairs=HELDOUT_PAIRS)
    return render(ref, size, rng), text, render(target, size, rng), ref, target, kind


def write_dataset(out_dir: Path, n: int, split: str = "train", seed_offset: int = 0) -> Path:
    """Write ``n`` examples as ``scene_00000.png`` ... plus ``captions.tsv``; return its path.

    The TSV has the header ``filepath<TAB>title`` with file paths relative to its folder, as
    open_clip's CSV data loader expects (``--csv-separator "\\t"``). Example ``k`` is
    ``example(split, seed_offset + k)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tsv = out / "captions.tsv"
    with tsv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["filepath", "title"])
        for k in range(n):
            ex = example(split, seed_offset + k)
            name = f"scene_{k:05d}.png"
            ex.image.save(out / name, format="PNG", compress_level=1)
            writer.writerow([name, ex.caption])
    return tsv
