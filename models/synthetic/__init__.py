"""A deterministic procedural world of shapes with true captions.

No image-caption data set can be downloaded here, so the bundled model is trained on scenes that
this package generates itself, deterministically from a seed (see the design's section "The
synthetic world"):

- RGB scenes (default 64x64) of one or two objects on a plain background;
- captions rendered from a structured :class:`Claim` in many phrasings, always true of the scene;
- hard negatives (attribute swaps and relation swaps) that are false of the scene;
- composed-retrieval triplets (reference, modification text, target);
- splits by seed, plus a held-out set of colour-shape pairs never seen in training.

One module per responsibility: ``world`` (vocabulary, scene graphs, claims, truth, hard
negatives), ``phrasing`` (the training captions), ``sampling`` and ``render`` (the training
renderer), ``triplets`` (composed triplets), ``splits``; the out-of-distribution renderer and its
held-out phrasings live in ``ood``, ``ood_render`` and ``ood_phrasing``, sharing only ``world``.
Only numpy and Pillow are used.
"""

from .phrasing import caption, caption_text, describe, phrase
from .render import BACKGROUND_JITTER, BACKGROUND_RGB, COLOR_JITTER, COLOR_RGB, render
from .sampling import SCALE_RANGE, sample_scene
from .splits import example, examples, triplet, write_dataset
from .triplets import compose_triplet
from .world import (
    BACKGROUNDS,
    COLORS,
    COMPOSE_KINDS,
    HELDOUT_PAIRS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLIT_SEEDS,
    Claim,
    Example,
    Obj,
    ObjDesc,
    Scene,
    claim_true,
    full_claim,
    inverse_relation,
    swap_attributes,
    swap_relation,
)

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_JITTER",
    "BACKGROUND_RGB",
    "COLORS",
    "COLOR_JITTER",
    "COLOR_RGB",
    "COMPOSE_KINDS",
    "HELDOUT_PAIRS",
    "RELATIONS",
    "SCALE_RANGE",
    "SHAPES",
    "SIZES",
    "SPLIT_SEEDS",
    "Claim",
    "Example",
    "Obj",
    "ObjDesc",
    "Scene",
    "caption",
    "caption_text",
    "claim_true",
    "compose_triplet",
    "describe",
    "example",
    "examples",
    "full_claim",
    "inverse_relation",
    "phrase",
    "render",
    "sample_scene",
    "swap_attributes",
    "swap_relation",
    "triplet",
    "write_dataset",
]
