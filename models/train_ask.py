"""Training the question-answering heads and the caption decoder on a frozen backbone
(``fusion-search train --only ask,describe``; never imported by the server).

The backbone (by default the bundled one) is not trained: the pool's pooled embeddings and
patch tokens are computed once and cached under the work directory. Each step draws images,
asks one question about each (a share of them about words the world does not have, whose
target is the flat distribution) and trains the attention, early and late heads side by side;
the caption decoder learns each scene's one target caption by teacher forcing. The served
head's temperature is then fitted on the OOD validation split. Checkpoints every
``checkpoint_every`` steps: a run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from .answer_heads import (
    ASK_KINDS,
    SERVED_ASK,
    AskConfig,
    AskHeads,
    CaptionDecoder,
    DescribeConfig,
)
from .ask import answer_paths, file_sha256
from .describe_grammar import CAPTION_WORDS, PAD, canonical_caption, encode_caption
from .encoder import WEIGHTS_DIR, bundled_paths, register_configs
from .fusion import Batch
from .synthetic.questions import ANSWERS, question, unknown_question
from .train_data import ScenePool, render_pool
from .train_fusion import frozen_all, frozen_texts
from .train_optim import lr_at, make_optimizer

HEADS = ("ask", "describe")


@dataclass
class AskTrainConfig:
    """Everything that defines a run of the ask/describe recipe; saved with the weights."""

    model: str = "fusion-tiny"
    pretrained: str | None = None  # None: the bundled backbone
    out: str = str(WEIGHTS_DIR)
    work_dir: str = "runs/answer-heads"
    only: tuple[str, ...] = HEADS
    pool: int = 24000  # training scenes: the encoder recipe's pool (cached in the work dir)
    images: int = 0  # use only the pool's first N scenes (0: all of them)
    randomise: float = 0.5  # share drawn with domain randomisation, as the encoder's recipe
    ask_steps: int = 1000
    describe_steps: int = 600
    batch: int = 256  # questions per ask step (``group`` per image); captions per describe step
    group: int = 4
    describe_batch: int = 128
    lr: float = 1e-3
    warmup: int = 50
    unknown: float = 0.1  # share of questions about words the world does not have
    calibrate_n: int = 800  # ood-val questions the temperature is fitted on
    threads: int = 0
    seed: int = 0
    checkpoint_every: int = 200
    losses: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Features:
    """The frozen backbone's view of the pool: pooled embeddings and patch tokens."""

    emb: torch.Tensor  # (N, D)
    tokens: torch.Tensor  # (N, T, W) float16 (halves the memory; the heads compute in fp32)


def pool_features(clip: Any, pool: ScenePool, cache: Path) -> Features:
    """Embeddings and patch tokens of the pool, computed once per backbone (cached)."""
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
        return Features(data["emb"], data["tokens"])
    emb, tok = frozen_all(clip, pool.pixels, desc="encode pool (frozen backbone)")
    assert tok is not None
    feats = Features(emb, tok.half())
    torch.save({"emb": feats.emb, "tokens": feats.tokens}, cache)
    return feats


def _batch(feats: Features, idx: np.ndarray, group: int,
           text: tuple[torch.Tensor, ...]) -> Batch:
    """Patch tokens once per image, pooled embeddings once per question (``group`` each)."""
    t_tok, pad, eot, t_emb = text
    sel = torch.as_tensor(idx)
    return Batch(feats.tokens[sel].float(), feats.emb[sel].repeat_interleave(group, 0), t_tok,
                 pad, eot, t_emb)


def ask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on answered questions (target >= 0) and, for questions about unknown
    words (target -1), cross-entropy against the flat distribution."""
    logp = F.log_softmax(logits, dim=-1)
    known = targets >= 0
    loss = logits.new_zeros(())
    if bool(known.any()):
        loss = loss + F.nll_loss(logp[known], targets[known], reduction="sum")
    if bool((~known).any()):
        loss = loss - logp[~known].mean(dim=-1).sum()
    return loss / len(targets)


def _resume(path: Path, module: torch.nn.Module, opt: Any) -> tuple[int, list[float]]:
    if not path.is_file():
        return 0, []
    state = torch.load(path, weights_only=False)
    module.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    return int(state["step"]), list(state["losses"])


def train_ask_heads(clip: Any, tokenizer: Any, pool: ScenePool, feats: Features,
                    cfg: AskTrainConfig, work: Path) -> tuple[AskHeads, list[float]]:
    """The attention, early and late question-answering heads, side by side."""
    acfg = AskConfig(text_width=int(clip.token_embedding.weight.shape[1]),
                     image_width=int(feats.tokens.shape[-1]), embed_dim=int(feats.emb.shape[-1]),
                     image_tokens=int(feats.tokens.shape[1]), answers=len(ANSWERS))
    heads = AskHeads(acfg, ANSWERS, tuple(ASK_KINDS))
    opt = make_optimizer(list(heads.named_parameters()), cfg.lr, 0.01)
    ckpt = work / "ask.pt"
    start, losses = _resume(ckpt, heads, opt)
    index = {a: i for i, a in enumerate(ANSWERS)}
    heads.train()
    bar = tqdm(range(start, cfg.ask_steps), desc="ask heads", unit="step", initial=start,
               total=cfg.ask_steps)
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step, 16])  # resumable: a step's data is fixed
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.ask_steps, cfg.lr, cfg.warmup)
        # ``group`` questions about each image share its patch tokens (AttentionVQA.attend)
        idx = rng.choice(len(pool), cfg.batch // cfg.group, replace=False)
        qs = [unknown_question(pool.scenes[i], rng) if rng.random() < cfg.unknown
              else question(pool.scenes[i], rng) for i in idx for _ in range(cfg.group)]
        targets = torch.tensor([index[q.answer] if q.answer else -1 for q in qs])
        b = _batch(feats, idx, cfg.group, frozen_texts(clip, tokenizer, [q.text for q in qs]))
        per_head = {k: ask_loss(heads.logits(k, b, cfg.group), targets) for k in heads.heads}
        loss = torch.stack(list(per_head.values())).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for head in heads.heads.values():
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        losses.append(float(per_head[SERVED_ASK].detach()))
        bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in per_head.items()})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.ask_steps:
            torch.save({"model": heads.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "losses": losses}, ckpt)
    return heads.eval(), losses


def caption_targets(scenes: list[Any], max_len: int) -> torch.Tensor:
    """(N, max_len) word ids of each scene's target caption, padded."""
    pad = CAPTION_WORDS.index(PAD)
    out = torch.full((len(scenes), max_len), pad, dtype=torch.long)
    for i, s in enumerate(scenes):
        ids = encode_caption(canonical_caption(s))[:max_len]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def train_describe_head(pool: ScenePool, feats: Features, cfg: AskTrainConfig,
                        work: Path) -> tuple[CaptionDecoder, list[float]]:
    """The caption decoder, by teacher forcing on each scene's target caption."""
    dcfg = DescribeConfig(image_width=int(feats.tokens.shape[-1]),
                          image_tokens=int(feats.tokens.shape[1]))
    dec = CaptionDecoder(dcfg)
    opt = make_optimizer(list(dec.named_parameters()), cfg.lr, 0.01)
    ckpt = work / "describe.pt"
    start, losses = _resume(ckpt, dec, opt)
    targets = caption_targets(pool.scenes, dcfg.max_len)
    pad = CAPTION_WORDS.index(PAD)
    dec.train()
    bar = tqdm(range(start, cfg.describe_steps), desc="caption decoder", unit="step",
               initial=start, total=cfg.describe_steps)
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step, 17])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.describe_steps, cfg.lr, cfg.warmup)
        sel = torch.as_tensor(rng.choice(len(pool), cfg.describe_batch, replace=False))
        ids = targets[sel]
        length = int((ids != pad).sum(dim=1).max())
        ids = ids[:, :length]
        logits = dec(ids[:, :-1], dec.memory(feats.tokens[sel].float()))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               ignore_index=pad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.describe_steps:
            torch.save({"model": dec.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "losses": losses}, ckpt)
    return dec.eval(), losses


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``targets`` (a fine grid
    search: one parameter, no optimiser to tune)."""
    best, best_nll = 1.0, float("inf")
    t = torch.from_numpy(logits).double()
    y = torch.from_numpy(targets).long()
    for temp in np.exp(np.linspace(np.log(0.2), np.log(20.0), 241)):
        nll = float(F.cross_entropy(t / temp, y))
        if nll < best_nll:
            best, best_nll = float(temp), nll
    return best


def _save(module: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(sd, str(path))
    path.with_name(path.name.replace(".safetensors", ".json")).write_text(
        json.dumps(meta, indent=2))


def run_answer_heads(cfg: AskTrainConfig) -> dict[str, Any]:
    """Train the heads in ``cfg.only`` on the frozen backbone, calibrate, save; return where
    the files went and how long it took.

    Raises:
        ValueError: ``cfg.only`` names something other than ask and describe.
    """
    unknown = set(cfg.only) - set(HEADS)
    if unknown or not cfg.only:
        raise ValueError(f"--only takes ask, describe or both, not {sorted(unknown) or 'none'}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    register_configs()
    t0 = time.time()
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    backbone = cfg.pretrained or str(bundled_paths(cfg.model)[0])
    clip = open_clip.create_model(cfg.model, pretrained=backbone).eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    digest = file_sha256(Path(backbone)) if Path(backbone).is_file() else None
    size = open_clip.get_model_preprocess_cfg(clip)["size"]
    size = size if isinstance(size, int) else size[0]
    pool = render_pool(cfg.pool, work, size, cfg.randomise)
    if 0 < cfg.images < len(pool):
        pool = ScenePool(pool.pixels[: cfg.images], pool.scenes[: cfg.images])
    feats = pool_features(clip, pool, work / f"features_{(digest or cfg.model)[:12]}_{cfg.pool}"
                          f"_dr{cfg.randomise:g}_{len(pool)}.pt")
    # checkpoints per backbone: a run on another backbone must not resume these heads
    ckdir = work / f"heads_{(digest or cfg.model)[:12]}"
    ckdir.mkdir(parents=True, exist_ok=True)
    paths = answer_paths(Path(cfg.out), cfg.model)
    recipe = {k: v for k, v in asdict(cfg).items() if k != "losses"}
    written: dict[str, str] = {}
    if "ask" in cfg.only:
        heads, losses = train_ask_heads(clip, tokenizer, pool, feats, cfg, ckdir)
        from .evaluate_ask import served_logits_ood_val  # evaluation code, only after training
        from .retrieval import RetrievalModel

        served = RetrievalModel(cfg.model, clip, tokenizer, trained=True)
        logits, targets = served_logits_ood_val(served, heads, cfg.calibrate_n)
        heads.temperature = fit_temperature(logits, targets)
        _save(heads, paths["ask"], {
            "config": heads.cfg.to_dict(), "answers": list(heads.answers),
            "kinds": list(heads.heads), "served": SERVED_ASK,
            "calibration": {"temperature": heads.temperature, "fitted_on": "ood-val",
                            "questions": len(targets)},
            "backbone": backbone if digest is None else Path(backbone).name,
            "backbone_sha256": digest, "recipe": recipe})
        cfg.losses["ask"] = losses
        written["ask"] = str(paths["ask"])
    if "describe" in cfg.only:
        dec, losses = train_describe_head(pool, feats, cfg, ckdir)
        _save(dec, paths["describe"], {
            "config": dec.cfg.to_dict(), "words": list(dec.words),
            "backbone": backbone if digest is None else Path(backbone).name,
            "backbone_sha256": digest, "recipe": recipe})
        cfg.losses["describe"] = losses
        written["describe"] = str(paths["describe"])
    return {"seconds": round(time.time() - t0, 1), **written,
            "final_loss": {k: round(float(np.mean(v[-50:])), 4) for k, v in cfg.losses.items()}}
