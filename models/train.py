"""Training recipe for the bundled model (never imported by the server).

Stage 1 trains the open_clip dual encoder contrastively on the synthetic world with a
multi-positive loss (a caption such as "a red circle" is true of many images).  Stage 2 freezes it
and trains the fusion heads side by side: a match score against hard negatives (attribute and
relation swaps) and composition against the frozen target-image embeddings.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import synthetic as syn
from .encoder import WEIGHTS_DIR, bundled_paths, register_configs, visual_forward
from .fusion import Batch, FusionConfig, FusionHeads
from .synthetic.randomise import noisy_caption, randomise_image

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved with its checkpoints."""

    model: str = "fusion-tiny"
    pretrained: str | None = None
    data: str | None = None  # a TSV (filepath, title) of one's own captioned images
    out: str = str(WEIGHTS_DIR)
    work_dir: str = "runs/train"
    pool: int = 24000  # pre-rendered training scenes
    triplets: int = 12000  # pre-rendered composed triplets
    batch: int = 192
    encoder_steps: int = 2000
    fusion_steps: int = 1000
    lr: float = 1e-3
    fusion_lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    threads: int = 0
    seed: int = 0
    checkpoint_every: int = 200
    aux_weight: float = 1.0  # scene-graph attribute prediction beside the contrastive loss
    layout_weight: float = 10.0  # where each colour and shape sits, from both towers' embeddings
    object_weight: float = 1.0  # shape, colour and size of each object from the tokens under it
    fusion_width: int = 128
    fusion_depth: int = 2
    token_layer: int = -1  # vision block the fusion heads read patch tokens from (-1: last)
    coords: bool = True  # fusion heads see each patch's (x, y) grid position
    mined: int = 24  # captions per stage-2 step whose top-8 dual-encoder hits are match examples
    image_size: int | None = None  # input size other than the config's (open_clip's override)
    # opt-in, off in the bundled recipe (models/synthetic/randomise.py):
    randomise: float = 0.0  # share of pool scenes with randomised colour, resolution, blur, JPEG
    paraphrase: float = 0.0  # share of stage-1 captions with surface noise (articles, a typo)
    losses: dict[str, list[float]] = field(default_factory=dict)


# ---- data -------------------------------------------------------------------------------------


class ScenePool:
    """Pre-rendered training scenes as normalised tensors, plus their scene graphs."""

    def __init__(self, pixels: torch.Tensor, scenes: list[syn.Scene]) -> None:
        self.pixels = pixels
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)


def _normalise(arr: np.ndarray) -> torch.Tensor:
    mean = np.asarray(open_clip.OPENAI_DATASET_MEAN, np.float32)
    std = np.asarray(open_clip.OPENAI_DATASET_STD, np.float32)
    x = (arr.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def render_pool(n: int, cache: Path, size: int, randomise: float = 0.0) -> ScenePool:
    """Render (or load from cache) ``n`` training examples; a ``randomise`` share of them with
    domain randomisation (each decided by its own seed, so a pool is the same every time)."""
    path = cache / (f"pool_{n}_{size}.npz" if not randomise
                    else f"pool_{n}_{size}_randomise{randomise:g}.npz")
    scenes = []
    if path.is_file():
        arr = np.load(path)["pixels"]
        scenes = [syn.example("train", i, size=8).scene for i in range(n)]
        return ScenePool(_normalise(arr), scenes)
    arr = np.zeros((n, size, size, 3), np.uint8)
    for i in tqdm(range(n), desc="render scenes", unit="img"):
        ex = syn.example("train", i, size=size)
        image = ex.image
        if randomise:
            rng = np.random.default_rng([syn.SPLIT_SEEDS["train"], i, 99])
            if rng.random() < randomise:
                image = randomise_image(image, rng)
        arr[i] = np.asarray(image)
        scenes.append(ex.scene)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, pixels=arr)
    return ScenePool(_normalise(arr), scenes)


@dataclass
class TripletPool:
    ref: torch.Tensor
    target: torch.Tensor
    texts: list[str]
    target_keys: list[Any]


def render_triplets(n: int, cache: Path, size: int) -> TripletPool:
    """Render (or load from cache) ``n`` composed triplets."""
    path = cache / f"triplets_{n}_{size}.npz"
    texts, keys = [], []
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        meta = json.loads(path.with_suffix(".json").read_text())
        return TripletPool(_normalise(data["ref"]), _normalise(data["target"]), meta["texts"],
                           [tuple(map(str, k)) for k in meta["keys"]])
    ref = np.zeros((n, size, size, 3), np.uint8)
    tgt = np.zeros_like(ref)
    for i in tqdm(range(n), desc="render triplets", unit="trip"):
        r_img, text, t_img, _r, t_scene, _kind = syn.triplet("train", i, size=size)
        ref[i], tgt[i] = np.asarray(r_img), np.asarray(t_img)
        texts.append(text)
        keys.append(repr(t_scene.key()))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, ref=ref, target=tgt)
    path.with_suffix(".json").write_text(json.dumps({"texts": texts, "keys": keys}))
    return TripletPool(_normalise(ref), _normalise(tgt), texts, keys)


# ---- model pieces ------------------------------------------------------------------------------


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


def multi_positive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target spread evenly over every positive in the row."""
    target = pos / pos.sum(dim=1, keepdim=True).clamp(min=1)
    has = pos.sum(dim=1) > 0
    loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    return loss[has].mean()


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def _optimizer(params: Sequence[tuple[str, torch.nn.Parameter]], lr: float, wd: float) -> Any:
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )


# ---- stage 1 -----------------------------------------------------------------------------------


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


@torch.no_grad()
def token_width(clip: Any, pixels: torch.Tensor) -> int:
    """Width of the image tower's patch tokens (a ViT's width, a CNN's projected cells)."""
    was_training = clip.training
    clip.eval()  # a probe must not move a CNN's batch-norm statistics
    width = int(visual_forward(clip.visual, pixels)[1].shape[-1])
    clip.train(was_training)
    return width


def train_encoder(clip: Any, tokenizer: Any, pool: ScenePool, cfg: TrainConfig,
                  work: Path) -> list[float]:
    """Contrastive training of both towers with multi-positive targets and swapped captions.

    An auxiliary linear head predicts the scene graph's objects and background from the image
    embedding: dense supervision that teaches the small image tower colours and shapes sooner.
    """
    embed_dim = clip.text_projection.shape[1]
    n_cls = len(OBJECT_TYPES) + len(syn.BACKGROUNDS)
    aux = torch.nn.Linear(embed_dim, n_cls + 2 * len(LAYOUT_SLOTS))
    text_aux = torch.nn.Linear(embed_dim, 2 * len(LAYOUT_SLOTS))
    obj_aux = torch.nn.Linear(token_width(clip, pool.pixels[:1]), sum(OBJECT_CLASSES))
    params = (list(clip.named_parameters())
              + [(f"aux.{n}", p) for n, p in aux.named_parameters()]
              + [(f"text_aux.{n}", p) for n, p in text_aux.named_parameters()]
              + [(f"obj_aux.{n}", p) for n, p in obj_aux.named_parameters()])
    opt = _optimizer(params, cfg.lr, cfg.weight_decay)
    ckpt = work / "encoder.pt"
    start, losses = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        clip.load_state_dict(state["model"])
        start, losses = state["step"], state["losses"]
        if "obj_aux" in state:
            aux.load_state_dict(state["aux"])
            text_aux.load_state_dict(state["text_aux"])
            obj_aux.load_state_dict(state["obj_aux"])
            opt.load_state_dict(state["opt"])
        log.info("resumed encoder training at step %d", start)
    rng = np.random.default_rng([cfg.seed, start])
    clip.train()
    bar = tqdm(range(start, cfg.encoder_steps), desc="stage 1: dual encoder", unit="step",
               initial=start, total=cfg.encoder_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.encoder_steps, cfg.lr, cfg.warmup)
        idx = rng.choice(len(pool), cfg.batch, replace=False)
        scenes = [pool.scenes[i] for i in idx]
        texts, claims, negs = [], [], []
        for s in scenes:
            text, claim = syn.caption(s, rng)
            if cfg.paraphrase and rng.random() < cfg.paraphrase:
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
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.encoder_steps:
            torch.save({"model": clip.state_dict(), "aux": aux.state_dict(),
                        "text_aux": text_aux.state_dict(), "obj_aux": obj_aux.state_dict(),
                        "opt": opt.state_dict(),
                        "step": step + 1, "losses": losses}, ckpt)
    clip.eval()
    return losses


# ---- stage 2 -----------------------------------------------------------------------------------


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
    opt = _optimizer(list(heads.named_parameters()), cfg.fusion_lr, 0.01)
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


def read_pairs(tsv: Path) -> list[tuple[Path, str]]:
    """(image path, caption) rows of a TSV with ``filepath`` and ``title`` columns."""
    import csv

    rows = []
    with tsv.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            fp = Path(row["filepath"])
            if row.get("title"):
                rows.append((fp if fp.is_absolute() else tsv.parent / fp, row["title"]))
    if len(rows) < 8:
        raise ValueError(f"{tsv}: needs at least 8 rows with filepath and title")
    return rows


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
    opt = _optimizer(list(heads.named_parameters()), cfg.fusion_lr, 0.01)
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


# ---- outputs -----------------------------------------------------------------------------------


def plot_losses(enc: list[float], fus: dict[str, list[float]], path: Path) -> None:
    """Write the loss curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(v: list[float], w: int = 25) -> np.ndarray:
        a = np.asarray(v, np.float64)
        if len(a) < w:
            return a
        return np.convolve(a, np.ones(w) / w, mode="valid")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(smooth(enc))
    axes[0].set_title("stage 1: dual encoder, contrastive + auxiliary losses")
    axes[0].set_xlabel("step")
    for k, v in fus.items():
        axes[1].plot(smooth(v), label=k)
    axes[1].set_title("stage 2: fusion heads (sum over late/early/cross1/attention)")
    axes[1].set_xlabel("step")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_weights(clip: Any, heads: FusionHeads, cfg: TrainConfig, out: Path) -> dict[str, Path]:
    """Write the backbone (fp16 safetensors, loadable by open_clip) and the fusion heads."""
    out.mkdir(parents=True, exist_ok=True)
    backbone, fusion, fusion_cfg = (out / p.name for p in bundled_paths(cfg.model))
    if cfg.data is None:  # a pretrained backbone is not re-saved: its own file stays in use
        sd = {k: v.detach().to(torch.float16).contiguous() for k, v in clip.state_dict().items()}
        save_file(sd, str(backbone))
    fsd = {k: v.detach().to(torch.float16).contiguous() for k, v in heads.state_dict().items()}
    save_file(fsd, str(fusion))
    meta = {"config": heads.cfg.to_dict(), "kinds": list(heads.heads),
            "compose": cfg.data is None,  # composition needs triplets: synthetic world only
            "recipe": {k: v for k, v in asdict(cfg).items() if k != "losses"}}
    fusion_cfg.write_text(json.dumps(meta, indent=2))
    written = {"fusion": fusion, "fusion_config": fusion_cfg}
    return {"backbone": backbone, **written} if cfg.data is None else written


def run(cfg: TrainConfig, plot: Path | None = None) -> dict[str, Any]:
    """The whole recipe: render data, stage 1, stage 2, save weights and the loss plot."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    register_configs()
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    clip = open_clip.create_model(cfg.model, pretrained=cfg.pretrained,
                                  force_image_size=cfg.image_size)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    size = open_clip.get_model_preprocess_cfg(clip)["size"]
    size = size if isinstance(size, int) else size[0]
    if cfg.data is not None:
        # a pretrained backbone stays as it is; only the fusion heads learn from the TSV
        enc_losses: list[float] = []
        heads, fus_losses = train_fusion_pairs(clip, tokenizer, Path(cfg.data), cfg, work)
    else:
        pool = render_pool(cfg.pool, work, size, cfg.randomise)
        trip = render_triplets(cfg.triplets, work, size)
        enc_losses = train_encoder(clip, tokenizer, pool, cfg, work) if cfg.encoder_steps else []
        heads, fus_losses = train_fusion(clip, tokenizer, pool, trip, cfg, work)
    paths = save_weights(clip, heads, cfg, Path(cfg.out))
    if plot is not None:
        plot_losses(enc_losses, fus_losses, plot)
    return {"seconds": round(time.time() - t0, 1), "encoder_loss": enc_losses,
            "fusion_loss": fus_losses, **{k: str(v) for k, v in paths.items()}}


def load_trained(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (used by tests to check saved weights)."""
    return load_file(str(path))
