"""Stage 2: the fusion heads trained side by side on the frozen encoder, on the synthetic world
(match against hard negatives, composition against target embeddings) or on one's own
captioned images (match only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import synthetic as syn
from .fusion import Batch, FusionConfig, FusionHeads
from .towers import visual_forward
from .train_config import TrainConfig
from .train_data import ScenePool, TripletPool, read_pairs
from .train_encoder import encode_text_tokens
from .train_losses import multi_positive_loss, twin_loss
from .train_optim import lr_at, make_optimizer


@torch.no_grad()
def frozen_images(clip: Any, pixels: torch.Tensor,
                  token_layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    pooled, tokens = visual_forward(clip.visual, pixels, token_layer)
    return F.normalize(pooled, dim=-1), tokens


@torch.no_grad()
def frozen_all(clip: Any, pixels: torch.Tensor, token_layer: int = -1, tokens: bool = True,
               desc: str = "encode") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings (and patch tokens) of every image once: the encoder is frozen in stage 2."""
    embs, toks = [], []
    for s in tqdm(range(0, len(pixels), 512), desc=desc, unit="batch", leave=False):
        e, t = frozen_images(clip, pixels[s : s + 512], token_layer)
        embs.append(e)
        if tokens:
            toks.append(t)
    return torch.cat(embs), torch.cat(toks) if tokens else None


@torch.no_grad()
def frozen_texts(clip: Any, tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, ...]:
    return encode_text_tokens(clip, tokenizer(texts))


def _pair_batch(img: tuple[torch.Tensor, torch.Tensor], txt: tuple[torch.Tensor, ...]) -> Batch:
    emb, tok = img
    t_tok, pad, eot, t_emb = txt
    return Batch(tok, emb, t_tok, pad, eot, t_emb)


def match_examples(pool: ScenePool, idx: np.ndarray, rng: np.random.Generator
                   ) -> tuple[list[int], list[str], list[float], list[list[int]]]:
    """(scene index, text, label) with true captions, swapped twins and random captions, and
    the twin groups: the row of a true caption followed by the rows of its swapped twins."""
    rows: list[tuple[int, str, float]] = []
    groups: list[list[int]] = []
    for i in idx:
        s = pool.scenes[i]
        claim = syn.full_claim(s) if rng.random() < 0.5 else syn.describe(s, rng)
        group = [len(rows)]
        rows.append((i, syn.caption_text(claim, rng), 1.0))
        for neg in (syn.swap_attributes(claim, s), syn.swap_relation(claim, s)):
            if neg is not None:
                group.append(len(rows))
                rows.append((i, syn.caption_text(neg, rng), 0.0))
        if len(group) > 1:
            groups.append(group)
        other = pool.scenes[int(rng.integers(len(pool)))]
        text, oc = syn.caption(other, rng)
        rows.append((i, text, float(syn.claim_true(oc, s))))
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], groups


@torch.no_grad()
def mined_examples(clip: Any, tokenizer: Any, pool: ScenePool, pool_emb: torch.Tensor,
                   n_captions: int, k: int,
                   rng: np.random.Generator) -> tuple[list[int], list[str], list[float]]:
    """(scene index, text, label) for the images a caption's dual-encoder search ranks highest.

    That is the list the service re-ranks, so the match heads learn from exactly its near
    misses (a large red circle for "a small red circle"), labelled by the scene graph.
    """
    cand = torch.as_tensor(rng.choice(len(pool), min(len(pool), 4096), replace=False))
    texts, claims = [], []
    for i in rng.choice(len(pool), min(n_captions, len(pool)), replace=False):
        text, claim = syn.caption(pool.scenes[i], rng)
        texts.append(text)
        claims.append(claim)
    sims = frozen_texts(clip, tokenizer, texts)[3] @ pool_emb[cand].T
    top = cand[sims.topk(k, dim=1).indices]
    rows, out_texts, labels = [], [], []
    for q, (text, claim) in enumerate(zip(texts, claims, strict=True)):
        for j in top[q].tolist():
            rows.append(j)
            out_texts.append(text)
            labels.append(float(syn.claim_true(claim, pool.scenes[j])))
    return rows, out_texts, labels


def train_fusion(clip: Any, tokenizer: Any, pool: ScenePool, trip: TripletPool,
                 cfg: TrainConfig, work: Path) -> tuple[FusionHeads, dict[str, list[float]]]:
    """Train late, early, cross1 and attention heads on the frozen encoder."""
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    text_width = clip.token_embedding.weight.shape[1]
    embed_dim = clip.text_projection.shape[1]
    with torch.no_grad():
        _, probe = frozen_images(clip, pool.pixels[:1], cfg.token_layer)
    fcfg = FusionConfig(text_width, probe.shape[-1], embed_dim, cfg.fusion_width, 4,
                        cfg.fusion_depth, image_tokens=probe.shape[1],
                        token_layer=cfg.token_layer, coords=cfg.coords)
    heads = FusionHeads(fcfg)
    opt = make_optimizer(list(heads.named_parameters()), cfg.fusion_lr, 0.01)
    rng = np.random.default_rng(cfg.seed + 1)
    ckpt = work / "fusion.pt"
    start = 0
    losses: dict[str, list[float]] = {"match": [], "compose": []}
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        heads.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, losses = state["step"], state["losses"]
    bar = tqdm(range(start, cfg.fusion_steps), desc="stage 2: fusion heads", unit="step",
               initial=start, total=cfg.fusion_steps)
    half = cfg.batch // 2
    pool_emb, pool_tok = frozen_all(clip, pool.pixels, cfg.token_layer, desc="encode pool")
    ref_emb, ref_tok = frozen_all(clip, trip.ref, cfg.token_layer, desc="encode references")
    tgt_emb, _ = frozen_all(clip, trip.target, tokens=False, desc="encode targets")
    assert pool_tok is not None and ref_tok is not None
    key_id: dict[Any, int] = {}
    target_ids = np.array([key_id.setdefault(k, len(key_id)) for k in trip.target_keys])
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.fusion_steps, cfg.fusion_lr, cfg.warmup)
        # match: true captions vs attribute/relation swaps vs random captions
        idx = rng.choice(len(pool), half // 2, replace=False)
        rows, texts, labels, groups = match_examples(pool, idx, rng)
        if cfg.mined:
            more = mined_examples(clip, tokenizer, pool, pool_emb, cfg.mined, 8, rng)
            rows, texts, labels = rows + more[0], texts + more[1], labels + more[2]
        sel = torch.as_tensor(rows)
        b = _pair_batch((pool_emb[sel], pool_tok[sel]), frozen_texts(clip, tokenizer, texts))
        y = torch.tensor(labels)
        per_head = {}
        for k in heads.heads:
            scores = heads.score(k, b)
            per_head[k] = F.binary_cross_entropy_with_logits(scores, y)
            if k != "late" and groups:  # late fusion ranks twins by the frozen cosine alone
                per_head[k] = per_head[k] + twin_loss(scores, groups)
        match_loss = torch.stack(list(per_head.values())).sum()
        # compose: the query from (reference, text) against frozen target embeddings
        tidx = rng.choice(len(trip.texts), half, replace=False)
        r_emb, r_tok = ref_emb[tidx], ref_tok[tidx]
        cb = _pair_batch((r_emb, r_tok), frozen_texts(clip, tokenizer,
                                                      [trip.texts[i] for i in tidx]))
        # every target of the pool is a candidate, as in a real gallery, and the batch's
        # references are hard negatives: the query must move away from the image it started at
        pos = torch.from_numpy(target_ids[tidx][:, None] == target_ids[None, :]).float()
        gallery = torch.cat([tgt_emb, r_emb])
        gpos = torch.cat([pos, torch.zeros(len(tidx), len(tidx))], dim=1)
        compose_loss = torch.stack([
            multi_positive_loss(20.0 * heads.compose(k, cb) @ gallery.T, gpos)
            for k in heads.heads
        ]).sum()
        loss = match_loss + compose_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for head in heads.heads.values():  # per head: one head's large gradient can't mute another
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        losses["match"].append(float(match_loss.detach()))
        losses["compose"].append(float(compose_loss.detach()))
        for k, v in per_head.items():
            losses.setdefault(f"match_{k}", []).append(float(v.detach()))
        bar.set_postfix(match=f"{np.mean(losses['match'][-20:]):.3f}",
                        attention=f"{np.mean(losses['match_attention'][-20:]):.3f}",
                        compose=f"{np.mean(losses['compose'][-20:]):.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.fusion_steps:
            torch.save({"model": heads.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "losses": losses}, ckpt)
    return heads.eval(), losses


# ---- one's own captioned images ---------------------------------------------------------------


def word_swap(text: str, rng: np.random.Generator) -> str | None:
    """A hard negative for real captions: two words trade places (NegCLIP-style)."""
    words = text.split()
    content = [i for i, w in enumerate(words) if len(w) > 2]
    if len(content) < 2:
        return None
    i, j = rng.choice(content, 2, replace=False)
    if words[i] == words[j]:
        return None
    words[i], words[j] = words[j], words[i]
    return " ".join(words)


def train_fusion_pairs(clip: Any, tokenizer: Any, tsv: Path, cfg: TrainConfig,
                       work: Path) -> tuple[FusionHeads, dict[str, list[float]]]:
    """Train the match heads of every strategy on captioned images, the backbone frozen.

    Negatives are other images' captions and word-swapped captions.  There are no composed
    triplets in such data, so the saved heads declare ``compose: false`` and composition falls
    back to late fusion.
    """
    from .encoder import RetrievalModel

    pairs = read_pairs(tsv)
    for p in clip.parameters():
        p.requires_grad_(False)
    wrapper = RetrievalModel(cfg.model, clip, tokenizer, trained=True)
    fcfg = FusionConfig(wrapper.text_width, wrapper.image_token_width, wrapper.embed_dim,
                        cfg.fusion_width, 4, cfg.fusion_depth,
                        image_tokens=wrapper.num_image_tokens)
    heads = FusionHeads(fcfg)
    opt = make_optimizer(list(heads.named_parameters()), cfg.fusion_lr, 0.01)
    rng = np.random.default_rng(cfg.seed)
    losses: dict[str, list[float]] = {"match": []}
    batch = min(cfg.batch // 4, len(pairs))
    from .imaging import decode_image

    bar = tqdm(range(cfg.fusion_steps), desc="fusion heads on own data", unit="step")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.fusion_steps, cfg.fusion_lr, min(cfg.warmup, 20))
        idx = rng.choice(len(pairs), batch, replace=False)
        images = [decode_image(pairs[i][0].read_bytes()).image for i in idx]
        rows, texts, labels = [], [], []
        for r, i in enumerate(idx):
            caption = pairs[i][1]
            rows.append(r); texts.append(caption); labels.append(1.0)  # noqa: E702
            other = pairs[int(rng.integers(len(pairs)))][1]
            if other != caption:
                rows.append(r); texts.append(other); labels.append(0.0)  # noqa: E702
            swapped = word_swap(caption, rng)
            if swapped is not None:
                rows.append(r); texts.append(swapped); labels.append(0.0)  # noqa: E702
        with torch.no_grad():
            pixels = wrapper.preprocess(images).to(next(clip.parameters()).dtype)
            emb, tok = frozen_images(clip, pixels)
        sel = torch.as_tensor(rows)
        b = _pair_batch((emb[sel].float(), tok[sel].float()),
                        frozen_texts(clip, tokenizer, texts))
        y = torch.tensor(labels)
        loss = torch.stack([F.binary_cross_entropy_with_logits(heads.score(k, b), y)
                            for k in heads.heads]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses["match"].append(float(loss.detach()))
        bar.set_postfix(match=f"{np.mean(losses['match'][-20:]):.3f}")
    return heads.eval(), losses
