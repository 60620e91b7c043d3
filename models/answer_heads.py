"""Heads that answer questions about an image and describe it, over the frozen dual encoder.

* :class:`AttentionVQA`: question tokens through blocks of self-attention, cross-attention over
  the image's patch tokens and a feed-forward layer (the :class:`~models.fusion.FusionBlock` of
  attention fusion), read out at the end-of-text token into a classifier over the answers;
* :class:`EarlyVQA` (concatenated pooled embeddings through an MLP) and :class:`LateVQA` (the
  pooled embeddings projected apart and multiplied element-wise, then a linear classifier),
  which see only the pooled vectors, for comparison;
* :class:`CaptionDecoder`: a small autoregressive transformer decoder over the world's words
  (:mod:`models.describe_grammar`) cross-attending to the patch tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .describe_grammar import BOS, CAPTION_WORDS, EOS
from .fusion import Batch, FusionBlock, PatchCoords, _at_eot, factored_cross_attention


@dataclass(frozen=True)
class AskConfig:
    """Shapes of the question-answering heads; saved beside their weights."""

    text_width: int
    image_width: int
    embed_dim: int
    image_tokens: int
    answers: int
    width: int = 128
    heads: int = 4
    depth: int = 2

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _PatchInput(nn.Module):
    """Patch tokens into the head's width, with a learned position embedding and each patch's
    projected (x, y) grid coordinates (as the attention-fusion head reads them)."""

    def __init__(self, image_width: int, tokens: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(image_width, width)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.xy = PatchCoords(tokens, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens.to(self.proj.weight.dtype)) + self.pos + self.xy()


class VQABlock(FusionBlock):
    """A fusion block whose cross-attention always takes the factored form
    (:func:`~models.fusion.factored_cross_attention`), in training too, so that several
    questions about one image share its patch tokens: their token rows are queries of one
    attention over that image (``group`` questions per image, in order), and a question's few
    tokens are carried into the patches' width instead of every patch into the head's."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, image: torch.Tensor, pad: torch.Tensor,
        need_weights: bool = False, group: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.ln_self(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        n, length, width = x.shape
        q = self.ln_cross(x).reshape(n // group, group * length, width)
        attended, weights = factored_cross_attention(self.cross_attn, q, self.ln_image(image),
                                                     need_weights)
        x = x + attended.reshape(n, length, width)
        x = x + self.ff(self.ln_ff(x))
        return x, weights.reshape(n, length, -1) if weights is not None else None


class AttentionVQA(nn.Module):
    """Question tokens attend over patch tokens; a classifier reads the end-of-text token."""

    def __init__(self, cfg: AskConfig) -> None:
        super().__init__()
        self.text_in = nn.Linear(cfg.text_width, cfg.width)
        self.image_in = _PatchInput(cfg.image_width, cfg.image_tokens, cfg.width)
        self.blocks = nn.ModuleList(VQABlock(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.ln_out = nn.LayerNorm(cfg.width)
        self.classifier = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.GELU(),
                                        nn.Linear(cfg.width, cfg.answers))

    def attend(self, b: Batch, group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer logits (B, answers) and the first block's cross-attention of the end-of-text
        token over the patches (B, T), where the question looks for what it names.

        ``b.image_tokens`` holds one row per ``group`` consecutive questions.
        """
        x = self.text_in(b.text_tokens)
        image = self.image_in(b.image_tokens)
        weights = torch.zeros(0)
        for i, block in enumerate(self.blocks):
            x, w = block(x, image, b.text_mask, need_weights=i == 0, group=group)
            if w is not None:
                weights = _at_eot(w, b.text_eot)
        return self.classifier(self.ln_out(_at_eot(x, b.text_eot))), weights

    def forward(self, b: Batch, group: int = 1) -> torch.Tensor:
        return self.attend(b, group)[0]


class EarlyVQA(nn.Module):
    """Concatenated pooled image and question embeddings through an MLP."""

    def __init__(self, cfg: AskConfig) -> None:
        super().__init__()
        w = 2 * cfg.width
        self.mlp = nn.Sequential(nn.Linear(2 * cfg.embed_dim, w), nn.GELU(), nn.Linear(w, w),
                                 nn.GELU(), nn.LayerNorm(w), nn.Linear(w, cfg.answers))

    def forward(self, b: Batch) -> torch.Tensor:
        return self.mlp(torch.cat([b.image_emb, b.text_emb], dim=-1))


class LateVQA(nn.Module):
    """Each pooled embedding projected on its own, merged only by an element-wise product."""

    def __init__(self, cfg: AskConfig) -> None:
        super().__init__()
        w = 2 * cfg.width
        self.image = nn.Sequential(nn.Linear(cfg.embed_dim, w), nn.GELU(), nn.Linear(w, w))
        self.text = nn.Sequential(nn.Linear(cfg.embed_dim, w), nn.GELU(), nn.Linear(w, w))
        self.out = nn.Linear(w, cfg.answers)

    def forward(self, b: Batch) -> torch.Tensor:
        return self.out(self.image(b.image_emb) * self.text(b.text_emb))


ASK_KINDS: dict[str, type[nn.Module]] = {"attention": AttentionVQA, "early": EarlyVQA,
                                         "late": LateVQA}
SERVED_ASK = "attention"


class AskHeads(nn.Module):
    """The three question-answering heads side by side, with the answer vocabulary and the
    served head's calibration temperature."""

    def __init__(self, cfg: AskConfig, answers: tuple[str, ...],
                 kinds: tuple[str, ...] = tuple(ASK_KINDS)) -> None:
        super().__init__()
        if len(answers) != cfg.answers:
            raise ValueError(f"{len(answers)} answers for a head with {cfg.answers} classes")
        self.cfg = cfg
        self.answers = answers
        self.temperature = 1.0
        self.heads = nn.ModuleDict({k: ASK_KINDS[k](cfg) for k in kinds})

    def logits(self, kind: str, b: Batch, group: int = 1) -> torch.Tensor:
        """(B, answers) logits of head ``kind``; ``group`` questions per row of patch tokens
        (the pooled embeddings have one row per question)."""
        if kind == SERVED_ASK:
            return self.heads[kind](b, group)  # type: ignore[no-any-return]
        return self.heads[kind](b)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DescribeConfig:
    """Shapes of the caption decoder; saved beside its weights."""

    image_width: int
    image_tokens: int
    width: int = 128
    heads: int = 4
    depth: int = 2
    max_len: int = 24

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CaptionDecoder(nn.Module):
    """Words one at a time, each attending to the words before it and to the patch tokens."""

    def __init__(self, cfg: DescribeConfig, words: tuple[str, ...] = CAPTION_WORDS) -> None:
        super().__init__()
        self.cfg = cfg
        self.words = words
        self.embed = nn.Embedding(len(words), cfg.width)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_len, cfg.width) * 0.02)
        self.image_in = _PatchInput(cfg.image_width, cfg.image_tokens, cfg.width)
        layer = nn.TransformerDecoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.depth)
        self.ln_out = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, len(words))

    def memory(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.image_in(tokens)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Next-word logits (B, L, V) for word ids (B, L) given :meth:`memory` of the image."""
        n = ids.shape[1]
        x = self.embed(ids) + self.pos[:, :n]
        causal = torch.triu(torch.full((n, n), float("-inf"), device=ids.device), diagonal=1)
        return self.out(self.ln_out(self.decoder(x, memory, tgt_mask=causal,
                                                 tgt_is_causal=True)))

    @torch.no_grad()
    def greedy(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy captions of B images' patch tokens: word ids (B, <= max_len) from BOS on, and
        each caption's log-probability (its words and EOS)."""
        memory = self.memory(tokens)
        bos, eos = self.words.index(BOS), self.words.index(EOS)
        ids = torch.full((len(tokens), 1), bos, dtype=torch.long, device=tokens.device)
        logp = torch.zeros(len(tokens), device=tokens.device)
        done = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
        for _ in range(self.cfg.max_len - 1):
            step = F.log_softmax(self.forward(ids, memory)[:, -1].float(), dim=-1)
            best, nxt = step.max(dim=-1)
            logp = logp + torch.where(done, torch.zeros_like(best), best)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done = done | (nxt == eos)
            if bool(done.all()):
                break
        return ids, logp
