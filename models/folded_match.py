"""The attention head's match logit for inference, its weights folded once.

A re-rank scores one short query against N images' stored patch tokens. ``AttentionFusion``
written for training projects every patch into keys and values in every block; at inference
the algebra of attention allows far less work (``fusion.factored_cross_attention`` has the
derivation for one block):

* the patches are standardised once for every block (``image_in``, its bias, position and
  coordinates, then LayerNorm without its affine); each block's ``ln_image`` affine goes into
  that block's weights, since a constant added to every key's score leaves softmax unchanged
  and attention rows sum to one;
* per head, the query projection and the key projection are one matrix (W x W), so a text row
  becomes H query rows in the patches' own width and no key is ever projected;
* per head, the value projection and the output projection are one matrix too: the heads'
  attention-weighted patches, side by side, go through one (H W -> W) linear layer, with no
  transpose or copy between heads;
* the last block computes only the end-of-text row (the one read out), and its
  self-attention is folded the same way.

Same weights, same result as the module to rounding (tests/models/test_folded_match.py). The
folded weights are computed once, from the head's weights when the model loads, in the
precision the model runs in (bf16 where the CPU has it: the same re-rank R@1 on the test and
out-of-distribution sets as fp32, probabilities within 0.01). The ONNX export traces this
module as the match graph, so every runtime runs the same arithmetic.

fusion-tiny, one query of 15 tokens against 50 images, one thread, Intel Xeon (AMX-BF16):
the module's inference path 15.0 ms (fp32); the previous export graph (patches standardised
once, factored attention with per-head value projections) 17.3 ms on torch, 12.3 ms on ONNX
Runtime, 8.8 ms on OpenVINO bf16; this module 12.3 ms fp32 and 7.1 ms bf16 on torch, 11.7 ms
on ONNX Runtime, 8.4 ms on OpenVINO bf16 (/tmp scripts, 100 calls each).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import AttentionFusion, FusionBlock


def _fold(attn: nn.MultiheadAttention, gain: torch.Tensor | None = None,
          shift: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(Wqk (H W, W), bqk (H W,), Wvo (W, H W), bvo (W,)) of ``attn`` whose keys and values
    are ``n * gain + shift`` for the given ``n``: each head's query carried into the keys'
    width, and each head's value projection followed by its share of the output projection.
    The key bias is left out: it adds one constant to a query's every score."""
    width, heads = attn.embed_dim, attn.num_heads
    d = width // heads
    w_q, w_k, w_v = (w.detach().float() for w in attn.in_proj_weight.chunk(3))
    if attn.in_proj_bias is not None:
        b_q, _, b_v = (b.detach().float() for b in attn.in_proj_bias.chunk(3))
    else:
        b_q = b_v = torch.zeros(width)
    if shift is not None:
        b_v = b_v + w_v @ shift.detach().float()
    if gain is not None:
        w_k = w_k * gain.detach().float()
        w_v = w_v * gain.detach().float()
    scale = d**-0.5
    wk_h = w_k.view(heads, d, width)
    wqk = torch.einsum("hdk,hdq->hkq", wk_h, w_q.view(heads, d, width)) * scale  # (H, W, W)
    bqk = torch.einsum("hdk,hd->hk", wk_h, b_q.view(heads, d)) * scale
    w_o = attn.out_proj.weight.detach().float()
    b_o = (attn.out_proj.bias.detach().float() if attn.out_proj.bias is not None
           else torch.zeros(width))
    wvo = torch.einsum("ohd,hdw->ohw", w_o.view(width, heads, d), w_v.view(heads, d, width))
    return (wqk.reshape(heads * width, width), bqk.reshape(heads * width),
            wvo.reshape(width, heads * width), w_o @ b_v + b_o)


def rows_at(x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Each row's end-of-text token (B, 1, W) of ``x`` (B, L, W); ``eot`` is (B,) or (1,)."""
    index = eot.expand(x.shape[0])[:, None, None].expand(-1, 1, x.shape[2])
    return torch.gather(x, 1, index)


class _Folded(nn.Module):
    """One attention layer's folded weights (see ``_fold``) and their use."""

    wqk: torch.Tensor
    bqk: torch.Tensor
    wvo: torch.Tensor
    bvo: torch.Tensor

    def __init__(self, attn: nn.MultiheadAttention, gain: torch.Tensor | None = None,
                 shift: torch.Tensor | None = None) -> None:
        super().__init__()
        self.heads, self.width = attn.num_heads, attn.embed_dim
        wqk, bqk, wvo, bvo = _fold(attn, gain, shift)
        self.register_buffer("wqk", wqk)
        self.register_buffer("bqk", bqk)
        self.register_buffer("wvo", wvo)
        self.register_buffer("bvo", bvo)

    def forward(self, q: torch.Tensor, keys: torch.Tensor,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of the rows ``q`` (M, L, W) over ``keys`` (N, T, W), which serve as
        values too; M is N, or 1 for the same rows against every entry. ``pad`` (N or 1, T)
        is True at keys to ignore; one row masks every entry alike. Returns (N, L, W)."""
        qk = F.linear(q, self.wqk, self.bqk).reshape(q.shape[0], -1, self.width)
        scores = torch.matmul(qk, keys.transpose(1, 2))  # (N, L H, T)
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, :], float("-inf"))
        mixed = torch.matmul(torch.softmax(scores, dim=-1), keys)  # (N, L H, W)
        mixed = mixed.reshape(keys.shape[0], -1, self.heads * self.width)  # (N, L, H W)
        return F.linear(mixed, self.wvo, self.bvo)


class FoldedMatch(nn.Module):
    """``AttentionFusion.score`` at inference with weights folded once (module docstring):
    raw match logits (N,) of N images' patch tokens against N texts, or against one text
    (M = 1) for every image."""

    image_w: torch.Tensor
    image_const: torch.Tensor

    def __init__(self, head: AttentionFusion) -> None:
        super().__init__()
        # a copy: text_in, the blocks' LayerNorms and feed-forwards and the readout run here in
        # this module's precision, while the head itself serves training, composition and
        # explanations in its own
        self.head = head = copy.deepcopy(head)
        blocks: list[FusionBlock] = list(head.blocks)  # type: ignore[arg-type]
        self.eps = blocks[0].ln_image.eps if blocks else 1e-5
        if any(b.ln_image.eps != self.eps for b in blocks):
            raise ValueError("the blocks' ln_image differ in eps: patches are standardised once")
        with torch.no_grad():
            bias = (head.image_in.bias.detach().float() if head.image_in.bias is not None
                    else torch.zeros(head.image_in.out_features))
            const = bias.expand(1, -1).clone()
            if head.image_pos is not None:
                const = const + head.image_pos.detach().float()[0]
            if head.image_xy is not None:
                const = const + head.image_xy().detach().float()[0]
        self.width = int(head.image_in.out_features)
        self.register_buffer("image_w", head.image_in.weight.detach().float().clone())
        self.register_buffer("image_const", const)  # (T or 1, W)
        self.self_attn = nn.ModuleList(_Folded(b.self_attn) for b in blocks)
        self.cross_attn = nn.ModuleList(
            _Folded(b.cross_attn, b.ln_image.weight, b.ln_image.bias) for b in blocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.image_w.dtype

    def patches(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, W) standardised patches every block's cross-attention reads."""
        z = F.linear(image_tokens, self.image_w) + self.image_const
        return F.layer_norm(z, (self.width,), eps=self.eps)

    def forward(self, image_tokens: torch.Tensor, image_emb: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor, text_eot: torch.Tensor,
                text_emb: torch.Tensor) -> torch.Tensor:
        h = self.head
        x = h.text_in(text_tokens)  # (M, L, W)
        patches = self.patches(image_tokens)
        blocks: list[FusionBlock] = list(h.blocks)  # type: ignore[arg-type]
        last = len(blocks) - 1
        for i, block in enumerate(blocks):
            s = block.ln_self(x)
            if i == last:  # only the end-of-text row is read out
                x = rows_at(x, text_eot) + self.self_attn[i](rows_at(s, text_eot), s, text_mask)
            else:
                x = x + self.self_attn[i](s, s, text_mask)
            x = x + self.cross_attn[i](block.ln_cross(x), patches)
            x = x + block.ff(block.ln_ff(x))
        feat = h.ln_out((x if blocks else rows_at(x, text_eot))[:, 0])
        cos = (image_emb * text_emb).sum(-1)
        return h.match_head(feat).squeeze(-1) + h.cos_scale * cos  # type: ignore[no-any-return]
