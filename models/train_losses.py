"""The training losses and the targets they are computed against: multi-positive contrastive,
scene-graph and layout read-outs (stage 1), per-object naming from patch tokens, and the
caption-versus-swapped-twins choice (stage 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import synthetic as syn


def multi_positive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target spread evenly over every positive in the row."""
    target = pos / pos.sum(dim=1, keepdim=True).clamp(min=1)
    has = pos.sum(dim=1) > 0
    loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    return loss[has].mean()


OBJECT_TYPES = [(c, sh, z) for c in syn.COLORS for sh in syn.SHAPES for z in syn.SIZES]
_OBJECT_INDEX = {t: i for i, t in enumerate(OBJECT_TYPES)}


def scene_targets(scenes: Sequence[syn.Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-hot (colour, shape, size) presence and the background index of each scene."""
    objs = torch.zeros(len(scenes), len(OBJECT_TYPES))
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            objs[i, _OBJECT_INDEX[(o.color, o.shape, o.size)]] = 1.0
    bg = torch.tensor([syn.BACKGROUNDS.index(sc.background) for sc in scenes])
    return objs, bg


LAYOUT_SLOTS = [("color", c) for c in syn.COLORS] + [("shape", sh) for sh in syn.SHAPES]
_REL_OFFSET = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0),
               "below": (0.0, 1.0)}


def _slot(kind: str, value: str) -> int:
    return LAYOUT_SLOTS.index((kind, value))


def layout_targets(scenes: Sequence[syn.Scene]) -> torch.Tensor:
    """(B, 2 * slots): each colour's and shape's (x, y) offset from the scene's centre of mass.

    Zero for attributes that are absent (and for a lone object). A dual encoder that only knows
    *which* objects are present cannot tell "a red circle left of a blue square" from its mirror
    image; these targets make the pooled image embedding carry a linear read-out of where each
    colour and shape is, so that a caption's relation becomes a direction in the joint space.
    """
    out = torch.zeros(len(scenes), len(LAYOUT_SLOTS), 2)
    count = torch.zeros(len(scenes), len(LAYOUT_SLOTS), 1)
    for i, sc in enumerate(scenes):
        mx = sum(o.x for o in sc.objects) / len(sc.objects)
        my = sum(o.y for o in sc.objects) / len(sc.objects)
        for o in sc.objects:
            for k in (_slot("color", o.color), _slot("shape", o.shape)):
                out[i, k] += torch.tensor([2 * (o.x - mx), 2 * (o.y - my)])
                count[i, k] += 1
    return (out / count.clamp(min=1)).flatten(1)


def claim_layout(claims: Sequence[syn.Claim]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same layout as stated by a caption, and a mask of what the caption determines.

    "A left of B" puts A's colour and shape at (-0.5, 0) and B's at (+0.5, 0); only the slots
    the caption names are supervised, and nothing for claims without a relation.
    """
    out = torch.zeros(len(claims), len(LAYOUT_SLOTS), 2)
    mask = torch.zeros(len(claims), len(LAYOUT_SLOTS), 2)
    for i, c in enumerate(claims):
        if c.relation is None or len(c.objects) != 2:
            continue
        dx, dy = _REL_OFFSET[c.relation]
        hits: dict[int, list[tuple[float, float]]] = {}
        for d, sign in zip(c.objects, (0.5, -0.5), strict=True):
            for k in [_slot("shape", d.shape)] + ([_slot("color", d.color)] if d.color else []):
                hits.setdefault(k, []).append((sign * dx, sign * dy))
        for k, offs in hits.items():
            if len(offs) == 1:  # a colour or shape both objects share says nothing
                out[i, k] = torch.tensor(offs[0])
                mask[i, k] = 1.0
    return out.flatten(1), mask.flatten(1)


OBJECT_FIELDS = (("shape", syn.SHAPES), ("color", syn.COLORS), ("size", syn.SIZES))
OBJECT_CLASSES = [len(vocab) for _name, vocab in OBJECT_FIELDS]  # logits per field, in order


def object_targets(scenes: Sequence[syn.Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every object's centre as a ``grid_sample`` point (B, 2, 1, 2) and its (shape, colour, size)
    indices (B, 2, 3); -1 marks the missing second object of a one-object scene."""
    grid = torch.zeros(len(scenes), 2, 1, 2)
    labels = torch.full((len(scenes), 2, len(OBJECT_FIELDS)), -1, dtype=torch.long)
    for i, sc in enumerate(scenes):
        for k, o in enumerate(sc.objects):
            grid[i, k, 0] = torch.tensor([2 * o.x - 1, 2 * o.y - 1])
            labels[i, k] = torch.tensor([vocab.index(getattr(o, name))
                                         for name, vocab in OBJECT_FIELDS])
    return grid, labels


def object_loss(head: torch.nn.Module, tokens: torch.Tensor, scenes: Sequence[syn.Scene]
                ) -> torch.Tensor:
    """Name each object's shape, colour and size from the patch tokens at its centre.

    The patch tokens are what the fusion heads read, yet a ViT trained through its pooled
    output gives the last block's patch outputs no gradient at all. A linear read-out of the
    token grid, bilinearly sampled at every object's centre, supervises them directly: the same
    tokens then say *which shape* sits under a patch, which the contrastive loss alone taught
    poorly (a probe named it for half of the on-object patches, against 99 % for colour).
    """
    n, t, w = tokens.shape
    side = math.isqrt(t)
    fmap = tokens[:, t - side * side:].transpose(1, 2).reshape(n, w, side, side)
    grid, labels = object_targets(scenes)
    feats = F.grid_sample(fmap, grid, align_corners=False).squeeze(-1).transpose(1, 2)  # B,2,W
    parts = head(feats).split(OBJECT_CLASSES, dim=-1)
    return torch.stack([
        F.cross_entropy(part.flatten(0, 1), labels[..., k].flatten(), ignore_index=-1)
        for k, part in enumerate(parts)
    ]).sum()


def twin_loss(scores: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Cross-entropy of choosing each true caption (first of its group) over its swapped twins.

    Binary labels score every pair on its own; this compares a caption with its twins on the
    same image, the choice that the compositional benchmark makes.
    """
    width = max(len(g) for g in groups)
    index = torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in groups])
    valid = torch.tensor([[True] * len(g) + [False] * (width - len(g)) for g in groups])
    logits = scores[index].masked_fill(~valid, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(len(groups), dtype=torch.long))
