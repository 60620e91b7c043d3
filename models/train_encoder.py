"""Stage 1: the open_clip dual encoder trained contrastively on the synthetic world, with the
auxiliary scene-graph, layout and per-object heads beside it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import synthetic as syn
from .synthetic.randomise import noisy_caption
from .towers import visual_forward
from .train_config import TrainConfig
from .train_data import ScenePool
from .train_losses import (
    LAYOUT_SLOTS,
    OBJECT_CLASSES,
    OBJECT_TYPES,
    claim_layout,
    layout_targets,
    multi_positive_loss,
    object_loss,
    scene_targets,
)
from .train_optim import lr_at, make_optimizer

log = logging.getLogger(__name__)


def encode_text_tokens(clip: Any, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Text tokens (B, L, W), padding mask, EOT index and normalised embeddings (B, D)."""
    eot = ids.argmax(dim=-1)
    length = int(eot.max()) + 1
    ids = ids[:, :length]
    x = clip.token_embedding(ids) + clip.positional_embedding[:length]
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    pooled = x[torch.arange(x.shape[0]), eot] @ clip.text_projection
    pad = torch.arange(length)[None, :] > eot[:, None]
    return x, pad, eot, F.normalize(pooled, dim=-1)


@torch.no_grad()
def token_width(clip: Any, pixels: torch.Tensor) -> int:
    """Width of the image tower's patch tokens (a ViT's width, a CNN's projected cells)."""
    was_training = clip.training
    clip.eval()  # a probe must not move a CNN's batch-norm statistics
    width = int(visual_forward(clip.visual, pixels)[1].shape[-1])
    clip.train(was_training)
    return width


def _phase(cfg: TrainConfig, robust: bool) -> tuple[int, float, str]:
    """Steps, peak learning rate and checkpoint name of one stage-1 phase: the plain phase, or
    the curriculum's robust phase that follows it (its own warm-up and cosine at
    ``robust_lr``)."""
    if not robust:
        return cfg.encoder_steps, cfg.lr, "encoder.pt"
    return cfg.robust_steps, cfg.robust_lr, "encoder_robust.pt"


def _load_probes(state: dict[str, Any], probes: Mapping[str, torch.nn.Module]) -> bool:
    """The auxiliary probes from a stage-1 checkpoint; False for one older than them."""
    if "obj_aux" not in state:
        return False
    for name, module in probes.items():
        module.load_state_dict(state[name])
    return True


def train_encoder(clip: Any, tokenizer: Any, pool: ScenePool, cfg: TrainConfig,
                  work: Path, robust: bool = False) -> list[float]:
    """Contrastive training of both towers with multi-positive targets and swapped captions.

    An auxiliary linear head predicts the scene graph's objects and background from the image
    embedding: dense supervision that teaches the small image tower colours and shapes sooner.
    ``robust``: the curriculum's second phase (:func:`_phase`) on the randomised pool, after a
    plain phase on the plain one; each resumes from its own checkpoint.
    """
    total, peak, ckpt_name = _phase(cfg, robust)
    # captions get surface noise in the phase that sees randomised drawings (both, if one phase)
    paraphrase = cfg.paraphrase if robust or not cfg.robust_steps else 0.0
    embed_dim = clip.text_projection.shape[1]
    n_cls = len(OBJECT_TYPES) + len(syn.BACKGROUNDS)
    aux = torch.nn.Linear(embed_dim, n_cls + 2 * len(LAYOUT_SLOTS))
    text_aux = torch.nn.Linear(embed_dim, 2 * len(LAYOUT_SLOTS))
    obj_aux = torch.nn.Linear(token_width(clip, pool.pixels[:1]), sum(OBJECT_CLASSES))
    params = (list(clip.named_parameters())
              + [(f"aux.{n}", p) for n, p in aux.named_parameters()]
              + [(f"text_aux.{n}", p) for n, p in text_aux.named_parameters()]
              + [(f"obj_aux.{n}", p) for n, p in obj_aux.named_parameters()])
    opt = make_optimizer(params, peak, cfg.weight_decay)
    ckpt = work / ckpt_name
    start, losses = 0, []
    probes = {"aux": aux, "text_aux": text_aux, "obj_aux": obj_aux}
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        clip.load_state_dict(state["model"])
        start, losses = state["step"], state["losses"]
        if _load_probes(state, probes):
            opt.load_state_dict(state["opt"])
        log.info("resumed encoder training (%s) at step %d", ckpt_name, start)
    elif robust and (work / "encoder.pt").is_file():  # the plain phase's probes carry over
        _load_probes(torch.load(work / "encoder.pt", weights_only=False), probes)
    rng = np.random.default_rng([cfg.seed, start, 1] if robust else [cfg.seed, start])
    clip.train()
    desc = "stage 1b: robust" if robust else "stage 1: dual encoder"
    bar = tqdm(range(start, total), desc=desc, unit="step", initial=start, total=total)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, peak, cfg.warmup)
        idx = rng.choice(len(pool), cfg.batch, replace=False)
        scenes = [pool.scenes[i] for i in idx]
        texts, claims, negs = [], [], []
        for s in scenes:
            text, claim = syn.caption(s, rng)
            if paraphrase and rng.random() < paraphrase:
                text = noisy_caption(text, rng)
            texts.append(text)
            claims.append(claim)
            neg = syn.swap_relation(claim, s) if rng.random() < 0.5 else None
            neg = neg or syn.swap_attributes(claim, s)
            if neg is not None:
                negs.append(syn.caption_text(neg, rng))
        pos = torch.tensor([[syn.claim_true(c, s) for s in scenes] for c in claims],
                           dtype=torch.float32)
        raw, tokens = visual_forward(clip.visual, pool.pixels[idx])
        img = F.normalize(raw, dim=-1)
        obj_loss = object_loss(obj_aux, tokens, scenes)
        objs, bg = scene_targets(scenes)
        logits_aux = aux(raw)
        aux_loss = F.binary_cross_entropy_with_logits(
            logits_aux[:, : len(OBJECT_TYPES)], objs
        ) * 10.0 + F.cross_entropy(logits_aux[:, len(OBJECT_TYPES) : n_cls], bg)
        ids = tokenizer(texts + negs)
        txt = encode_text_tokens(clip, ids)[3]
        t_layout, t_mask = claim_layout(claims)
        layout_loss = F.mse_loss(logits_aux[:, n_cls:], layout_targets(scenes)) + (
            (text_aux(txt[: len(texts)]) - t_layout) ** 2 * t_mask
        ).sum() / t_mask.sum().clamp(min=1)
        scale = clip.logit_scale.exp().clamp(max=100)
        logits = scale * txt @ img.T  # (T + negs, B)
        t2i = multi_positive_loss(logits[: len(texts)], pos)
        i2t_pos = torch.cat([pos.T, torch.zeros(len(scenes), len(negs))], dim=1)
        i2t = multi_positive_loss(logits.T, i2t_pos)
        loss = (0.5 * (t2i + i2t) + cfg.aux_weight * aux_loss + cfg.layout_weight * layout_loss
                + cfg.object_weight * obj_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", aux=f"{float(aux_loss.detach()):.3f}",
                        layout=f"{float(layout_loss.detach()):.3f}",
                        objects=f"{float(obj_loss.detach()):.3f}",
                        scale=f"{float(scale.detach()):.1f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            torch.save({"model": clip.state_dict(), "aux": aux.state_dict(),
                        "text_aux": text_aux.state_dict(), "obj_aux": obj_aux.state_dict(),
                        "opt": opt.state_dict(),
                        "step": step + 1, "losses": losses}, ckpt)
    clip.eval()
    return losses
