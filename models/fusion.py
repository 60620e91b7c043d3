"""Fusion heads over a frozen dual encoder: late, early and attention fusion.

Every head answers the same two questions:

* ``score(...)``  -> a match logit for (image, text) pairs, used to re-rank;
* ``compose(...)`` -> a query embedding in the joint space for "this image, changed by this text".

Late fusion works on pooled embeddings only (cosine; weighted sum), early fusion concatenates the
pooled embeddings into an MLP, attention fusion lets text tokens attend over image patch tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FusionConfig:
    """Shapes of the fusion heads; saved beside their weights."""

    text_width: int
    image_width: int
    embed_dim: int
    width: int = 128
    heads: int = 4
    depth: int = 2
    image_tokens: int = 0  # > 0: learn a position embedding for that many patch tokens
    token_layer: int = -1  # vision block whose patch outputs the heads read; -1: the last
    coords: bool = False  # add each patch's (x, y) grid coordinates, projected, to its token

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


@dataclass
class Batch:
    """Frozen-encoder features for B (image, text) pairs."""

    image_tokens: torch.Tensor  # (B, T, Wi)
    image_emb: torch.Tensor  # (B, D), L2-normalised
    text_tokens: torch.Tensor  # (B, L, Wt)
    text_mask: torch.Tensor  # (B, L) True where padding
    text_eot: torch.Tensor  # (B,) index of the end-of-text token
    text_emb: torch.Tensor  # (B, D), L2-normalised


class LateFusion(nn.Module):
    """Cosine of pooled embeddings; composition as a weighted sum (the classic baseline)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-3.0))

    def score(self, b: Batch) -> torch.Tensor:
        return self.scale * (b.image_emb * b.text_emb).sum(-1) + self.bias

    def compose(self, b: Batch) -> torch.Tensor:
        a = self.alpha.clamp(0.0, 1.0)
        return F.normalize(a * b.image_emb + (1 - a) * b.text_emb, dim=-1)


class EarlyFusion(nn.Module):
    """Concatenated pooled features through an MLP."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        d, w = cfg.embed_dim, cfg.width * 2
        self.trunk = nn.Sequential(
            nn.Linear(2 * d, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.LayerNorm(w)
        )
        self.match_head = nn.Linear(w, 1)
        self.compose_head = nn.Linear(w, d)

    def _features(self, b: Batch) -> torch.Tensor:
        return self.trunk(torch.cat([b.image_emb, b.text_emb], dim=-1))

    def score(self, b: Batch) -> torch.Tensor:
        return self.match_head(self._features(b)).squeeze(-1)

    def compose(self, b: Batch) -> torch.Tensor:
        return F.normalize(self.compose_head(self._features(b)) + b.image_emb, dim=-1)


class FusionBlock(nn.Module):
    """Text self-attention, then text->image cross-attention, then a feed-forward layer."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_cross = nn.LayerNorm(width)
        self.ln_image = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_ff = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(
        self, x: torch.Tensor, image: torch.Tensor, pad: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.attend_image(self.attend_text(x, pad), image, need_weights)

    def attend_text(self, x: torch.Tensor, pad: torch.Tensor, at: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """The residual self-attention step over the text tokens ``x`` (N, L, W).

        With ``at`` (N,) only that token's row is computed, (N, 1, W): it still attends over
        every text token, so the row equals the full step's at ``at``.
        """
        h = self.ln_self(x)
        if at is None:
            return x + self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return _at_eot(x, at)[:, None] + self.self_attn(
            _at_eot(h, at)[:, None], h, h, key_padding_mask=pad, need_weights=False)[0]

    def attend_image(self, x: torch.Tensor, image: torch.Tensor, need_weights: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attention of the text rows ``x`` over ``image`` (N, T, W), then the
        feed-forward layer. ``x`` may hold one text (1, L, W) for every image (inference)."""
        kv = self.ln_image(image)
        q = self.ln_cross(x)
        if not torch.is_grad_enabled() and _factored_is_cheaper(self.cross_attn, q, kv):
            attended, weights = factored_cross_attention(self.cross_attn, q, kv, need_weights)
        else:
            q = q.expand(kv.shape[0], -1, -1)
            attended, weights = self.cross_attn(
                q, kv, kv, need_weights=need_weights, average_attn_weights=True
            )
        x = x + attended
        x = x + self.ff(self.ln_ff(x))
        return x, weights


def _factored_is_cheaper(attn: nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor) -> bool:
    """Factored attention costs about heads x queries x keys x width multiply-adds per pair
    against keys x width x width for projecting the keys and values: cheaper while
    heads x queries < width (a short text over many patches)."""
    return attn.in_proj_weight is not None and attn.num_heads * q.shape[1] < attn.embed_dim


def factored_cross_attention(
    attn: nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor, need_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``attn(q, kv, kv)`` without projecting every key and value.

    Per head, softmax((q Wq + bq) (kv Wk + bk)^T / sqrt(d)) (kv Wv + bv) equals
    softmax(((q Wq + bq) Wk^T / sqrt(d)) kv^T) (kv Wv) + bv: the key bias adds the same amount
    to every key's score, which softmax ignores, and attention rows sum to one. So the text's
    few query rows are carried into the image's width instead of the image's many patch rows
    into the head's. Re-ranking scores N images against one short text, and the key/value
    projections of N x 64 patch tokens were most of its arithmetic. Same result as the module to
    rounding (tests/models/test_factored_attention.py); inference only, training keeps the
    module.
    """
    n, keys, width = kv.shape
    nq, length, _ = q.shape  # nq is n, or 1 for one text against every image
    heads = attn.num_heads
    d = width // heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, _, b_v = (attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None
                   else (None, None, None))
    qh = F.linear(q, w_q, b_q).view(nq * length, heads, d).transpose(0, 1)  # (H, Nq*L, d)
    # each head's queries carried back through its key projection, heads side by side per pair
    q_img = torch.bmm(qh, w_k.view(heads, d, width)) * (d**-0.5)  # (H, Nq*L, W)
    q_img = q_img.view(heads, nq, length, width).transpose(0, 1).reshape(nq, heads * length, width)
    if nq == 1 and n > 1:  # one text: one matmul over every image's patches
        scores = (kv.reshape(n * keys, width) @ q_img[0].T).view(n, keys, -1).transpose(1, 2)
    else:
        scores = torch.bmm(q_img, kv.transpose(1, 2))
    probs = torch.softmax(scores, dim=-1)  # (N, H*L, T)
    mixed = torch.bmm(probs, kv)  # (N, H*L, W): each head's attention-weighted patches
    mixed = mixed.view(n, heads, length, width).transpose(0, 1).reshape(heads, n * length, width)
    out = torch.bmm(mixed, w_v.view(heads, d, width).transpose(1, 2))  # (H, N*L, d)
    if b_v is not None:
        out = out + b_v.view(heads, 1, d)
    out = attn.out_proj(out.transpose(0, 1).reshape(n, length, width))
    probs = probs.reshape(n, heads, length, -1)
    return out, probs.mean(1) if need_weights else None


def _position_embedding(cfg: FusionConfig) -> nn.Parameter | None:
    if cfg.image_tokens <= 0:
        return None
    return nn.Parameter(torch.randn(1, cfg.image_tokens, cfg.width) * 0.02)


class PatchCoords(nn.Module):
    """A learned projection of each patch's fixed (x, y) centre in [-1, 1] on a square grid.

    Attention averages values, so a text token that attends to one object's patches reads that
    object's mean coordinates linearly: "left of" becomes a comparison of two numbers.
    """

    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        side = round(tokens**0.5)
        if side * side != tokens:
            raise ValueError(f"coords need a square patch grid, got {tokens} tokens")
        c = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        self.register_buffer("xy", torch.stack([xx.ravel(), yy.ravel()], -1)[None],
                             persistent=False)
        self.proj = nn.Linear(2, width)

    def forward(self) -> torch.Tensor:
        return self.proj(self.xy)


def _coords(cfg: FusionConfig) -> PatchCoords | None:
    return PatchCoords(cfg.image_tokens, cfg.width) if cfg.coords else None


def _at_eot(x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    return x[torch.arange(x.shape[0], device=x.device), eot]


def one_text_batch(b: Batch) -> bool:
    """Whether every pair of ``b`` holds the same text as a broadcast view (stride 0), as
    ``RetrievalModel`` builds a re-rank's batch: one query against many images."""
    return (b.text_tokens.shape[0] > 1 and b.text_tokens.stride(0) == 0
            and b.text_mask.stride(0) == 0 and b.text_eot.stride(0) == 0)


class AttentionFusion(nn.Module):
    """Text tokens attend over image patch tokens through a small stack of fusion blocks.

    The stack is read out at the end-of-text token into a match logit and a composed query.
    """

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.text_in = nn.Linear(cfg.text_width, cfg.width)
        self.image_in = nn.Linear(cfg.image_width, cfg.width)
        self.image_pos = _position_embedding(cfg)
        self.image_xy = _coords(cfg)
        self.blocks = nn.ModuleList(FusionBlock(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.ln_out = nn.LayerNorm(cfg.width)
        self.match_head = nn.Sequential(
            nn.Linear(cfg.width, cfg.width), nn.GELU(), nn.Linear(cfg.width, 1)
        )
        self.compose_head = nn.Linear(cfg.width, cfg.embed_dim)
        self.compose_gate = nn.Parameter(torch.tensor(1.0))
        # the dual encoder's cosine enters the match score: fusion refines it, never starts blind
        self.cos_scale = nn.Parameter(torch.tensor(10.0))

    def readout(
        self, b: Batch, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fused feature at the end-of-text token, and the first block's cross-attention there.

        The first block's end-of-text query is where the caption looks for what it names: on the
        bundled model about half its weight lies on the object's patches. The last block's looks
        everywhere else (under 1 % on the object), so it would explain a hit by its background.
        """
        fast = not torch.is_grad_enabled()
        one_text = fast and one_text_batch(b)  # text rows computed once until they meet images
        text = b.text_tokens[:1] if one_text else b.text_tokens
        pad, eot = (b.text_mask[:1], b.text_eot[:1]) if one_text else (b.text_mask, b.text_eot)
        x = self.text_in(text)
        image = self.image_in(b.image_tokens.to(x.dtype))
        if self.image_pos is not None:
            image = image + self.image_pos
        if self.image_xy is not None:
            image = image + self.image_xy()
        weights = None
        last = len(self.blocks) - 1
        blocks: list[FusionBlock] = list(self.blocks)  # type: ignore[arg-type]
        for i, block in enumerate(blocks):
            if x.shape[0] != pad.shape[0]:  # the one text met the images: a row per pair now
                pad, eot = b.text_mask, b.text_eot
            # Only the end-of-text row is read out, so at inference the last block computes
            # that row alone (it still attends over every text token): the same feature.
            at_end = fast and i == last
            x = block.attend_text(x, pad, at=eot if at_end else None)
            x, w = block.attend_image(x, image, need_weights=need_weights and i == 0)
            if w is not None:
                weights = w[:, 0] if at_end else _at_eot(w, eot)
        if x.shape[0] != b.text_eot.shape[0]:  # no block (depth 0) met the images
            x = x.expand(b.text_eot.shape[0], -1, -1)
        feat = x[:, 0] if fast and last >= 0 else _at_eot(x, b.text_eot)
        return self.ln_out(feat), weights

    def score(self, b: Batch) -> torch.Tensor:
        return self.score_from(self.readout(b)[0], b)

    def score_from(self, feat: torch.Tensor, b: Batch) -> torch.Tensor:
        cos = (b.image_emb * b.text_emb).sum(-1)
        return self.match_head(feat).squeeze(-1) + self.cos_scale * cos

    def compose(self, b: Batch) -> torch.Tensor:
        feat = self.readout(b)[0]
        return F.normalize(self.compose_head(feat) + self.compose_gate * b.image_emb, dim=-1)


class CrossAttentionOne(nn.Module):
    """The textbook form: one cross-attention layer, concatenated with the text feature."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        w = cfg.width
        self.text_in = nn.Linear(cfg.text_width, w)
        self.image_in = nn.Linear(cfg.image_width, w)
        self.image_pos = _position_embedding(cfg)
        self.image_xy = _coords(cfg)
        self.cross_attn = nn.MultiheadAttention(w, cfg.heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(2 * w, w), nn.GELU(), nn.LayerNorm(w))
        self.match_head = nn.Linear(w, 1)
        self.compose_head = nn.Linear(w, cfg.embed_dim)

    def _features(self, b: Batch) -> torch.Tensor:
        q = _at_eot(self.text_in(b.text_tokens), b.text_eot).unsqueeze(1)
        kv = self.image_in(b.image_tokens.to(q.dtype))
        if self.image_pos is not None:
            kv = kv + self.image_pos
        if self.image_xy is not None:
            kv = kv + self.image_xy()
        attended = self.cross_attn(q, kv, kv, need_weights=False)[0]
        return self.mlp(torch.cat([q, attended], dim=-1).squeeze(1))

    def score(self, b: Batch) -> torch.Tensor:
        return self.match_head(self._features(b)).squeeze(-1)

    def compose(self, b: Batch) -> torch.Tensor:
        return F.normalize(self.compose_head(self._features(b)) + b.image_emb, dim=-1)


HEADS: dict[str, type[nn.Module]] = {
    "late": LateFusion,
    "early": EarlyFusion,
    "attention": AttentionFusion,
    "cross1": CrossAttentionOne,
}


class FusionHeads(nn.Module):
    """All strategies side by side, so one checkpoint serves the service and the comparison."""

    def __init__(self, cfg: FusionConfig, kinds: tuple[str, ...] = tuple(HEADS)) -> None:
        super().__init__()
        self.cfg = cfg
        self.composes = True  # False for heads trained without composed triplets
        self.temperature = 1.0  # the match head's calibration (models.calibrate)
        self.match_bias = 0.0
        self.heads = nn.ModuleDict({k: HEADS[k](cfg) for k in kinds})

    def score(self, kind: str, b: Batch) -> torch.Tensor:
        return self.heads[kind].score(b)  # type: ignore[operator]

    def compose(self, kind: str, b: Batch) -> torch.Tensor:
        return self.heads[kind].compose(b)  # type: ignore[operator]
