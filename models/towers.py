"""Pooled image features and patch tokens from any open_clip image tower: ViT, ResNet or timm.

The fusion heads read a grid of patch tokens. A ViT has them (``output_tokens``); a CNN's are
the cells of its last feature map, read here before its pooling:

- open_clip's ``ModifiedResNet`` (RN50, RN101, ...): each cell of the last stage's grid (7x7 at
  224 px), with the attention pool's positional embedding, through the pool's value and output
  projections. The pooled embedding mixes exactly these vectors (each head's attention-weighted
  sum of the values, projected), so every token lies in the joint space's width and speaks the
  pooled embedding's language.
- a timm trunk (``convnext_tiny``, ...): the final stage's map, each cell through the
  classifier head's norm (the norm the pooled vector gets) when the head has one; tokens that a
  timm ViT-like trunk returns as a sequence lose their prefix (class) tokens.

Towers are told apart by their class, never by the model's name.
"""

from __future__ import annotations

from typing import Any

import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel


def visual_forward(visual: Any, pixels: torch.Tensor,
                   token_layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled image features (N, D) and patch tokens (N, T, W) from block ``token_layer`` (-1:
    the last).

    The last block's patch outputs get no gradient when a ViT is trained through its class
    token, so fusion heads may read an earlier block's (layer-normed) patch tokens instead.

    Raises:
        ValueError: ``token_layer`` other than -1 for a CNN tower.
    """
    if isinstance(visual, ModifiedResNet | TimmModel):
        if token_layer >= 0:
            raise ValueError("token_layer applies to ViT towers; a CNN's tokens are its last map")
        if isinstance(visual, ModifiedResNet):
            return resnet_forward(visual, pixels)
        return timm_forward(visual, pixels)
    if token_layer < 0:
        visual.output_tokens = True
        pooled, tokens = visual(pixels)
        return pooled, tokens
    out = visual.forward_intermediates(pixels, indices=[token_layer], output_fmt="NLC",
                                       normalize_intermediates=True)
    return out["image_features"], out["image_intermediates"][0]


def resnet_forward(visual: ModifiedResNet, pixels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's ResNet: the attention-pooled embedding and the last grid's cells projected
    by the pool's value and output projections (N, H*W, D)."""
    x = visual.stem(pixels)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    pool = visual.attnpool
    pooled = pool(x)
    cells = x.flatten(2).transpose(1, 2)  # (N, H*W, C)
    cells = cells + pool.positional_embedding[1:].to(cells.dtype)
    return pooled, pool.c_proj(pool.v_proj(cells))


def timm_forward(visual: TimmModel, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm trunk: the pooled, projected embedding and the final feature map's cells, each
    through the classifier head's norm when it has one."""
    trunk = visual.trunk
    feats = trunk.forward_features(pixels)
    pooled = visual.head(trunk.forward_head(feats))
    if feats.ndim == 4:  # (N, C, H, W)
        norm = getattr(getattr(trunk, "head", None), "norm", None)
        if isinstance(norm, torch.nn.Module):
            feats = norm(feats)
        tokens = feats.flatten(2).transpose(1, 2)
    else:  # (N, L, C) with prefix tokens first
        tokens = feats[:, int(getattr(trunk, "num_prefix_tokens", 0)) :]
    return pooled, tokens
