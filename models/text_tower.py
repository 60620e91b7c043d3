"""The CLIP text tower's fast path: which towers it applies to, the causal blocks it runs, and
the :class:`TextBatch` a text forward returns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def plain_text_tower(clip: Any) -> bool:
    """A CLIP text tower with a causal mask read at the argmax (EOT) token."""
    return (
        hasattr(clip, "token_embedding")
        and getattr(clip, "attn_mask", None) is not None
        and getattr(clip, "text_pool_type", "argmax") == "argmax"
    )


def lean_blocks_apply(transformer: Any) -> bool:
    """Whether ``causal_blocks`` computes exactly what ``transformer(x, attn_mask=causal)`` does:
    open_clip's plain pre-norm blocks, batch first, no cross-attention or checkpointing."""
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or not getattr(transformer, "batch_first", False) or len(blocks) == 0:
        return False
    for blk in blocks:
        attn = getattr(blk, "attn", None)
        if (not isinstance(attn, torch.nn.MultiheadAttention) or not attn.batch_first
                or attn.in_proj_weight is None or hasattr(blk, "ln_1_kv")
                or not isinstance(getattr(blk, "mlp", None), torch.nn.Sequential)):
            return False
    return not getattr(transformer, "grad_checkpointing", False)


def causal_blocks(blocks: Iterable[Any], x: torch.Tensor) -> torch.Tensor:
    """The text transformer's blocks with a causal mask, calling the attention kernel directly.

    ``nn.MultiheadAttention`` re-checks and reshapes its arguments on every call; for a short
    query on a small model that Python work costs more than the arithmetic. Same weights, same
    operations (pre-norm, fused QKV projection, causal softmax attention, MLP), so the output
    equals the module path's to rounding (tests/models/test_text_trim.py).
    """
    n, length, width = x.shape
    for blk in blocks:
        attn = blk.attn
        heads = attn.num_heads
        qkv = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o = F.linear(o.transpose(1, 2).reshape(n, length, width), attn.out_proj.weight,
                     attn.out_proj.bias)
        x = x + blk.ls_1(o)
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x


@dataclass(frozen=True)
class TextBatch:
    """Tokenised and encoded texts, trimmed to the longest text in the batch."""

    tokens: torch.Tensor  # (N, L, W) final-layer text tokens
    pad: torch.Tensor  # (N, L) True after the end-of-text token
    eot: torch.Tensor  # (N,) end-of-text index
    emb: torch.Tensor  # (N, D) L2-normalised

    def row(self, i: int) -> TextBatch:
        """Text ``i`` alone, trimmed after its end-of-text token: the tower is causal, so its
        tokens are the ones it would get if encoded by itself."""
        end = int(self.eot[i]) + 1
        return TextBatch(self.tokens[i : i + 1, :end], self.pad[i : i + 1, :end],
                         self.eot[i : i + 1], self.emb[i : i + 1])
