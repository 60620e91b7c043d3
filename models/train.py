"""Training recipe for the bundled model (never imported by the server).

Stage 1 trains the open_clip dual encoder contrastively on the synthetic world with a
multi-positive loss (a caption such as "a red circle" is true of many images).  Stage 2 freezes it
and trains the fusion heads side by side: a match score against hard negatives (attribute and
relation swaps) and composition against the frozen target-image embeddings.

This module is the entry point (``run``) and what it writes (weights, loss plot); the settings
are in ``models.train_config``, the data pools in ``models.train_data``, the losses in
``models.train_losses``, the optimiser in ``models.train_optim`` and the two stages in
``models.train_encoder`` and ``models.train_fusion``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from safetensors.torch import load_file, save_file

from .encoder import bundled_paths, register_configs
from .fusion import FusionHeads
from .train_config import TrainConfig
from .train_data import ScenePool, TripletPool, read_pairs, render_pool, render_triplets
from .train_encoder import encode_text_tokens, token_width, train_encoder
from .train_fusion import (
    frozen_all,
    frozen_images,
    frozen_texts,
    match_examples,
    mined_examples,
    train_fusion,
    train_fusion_pairs,
    word_swap,
)
from .train_losses import (
    LAYOUT_SLOTS,
    OBJECT_CLASSES,
    OBJECT_FIELDS,
    OBJECT_TYPES,
    claim_layout,
    layout_targets,
    multi_positive_loss,
    object_loss,
    object_targets,
    scene_targets,
    twin_loss,
)
from .train_optim import lr_at

# re-exported: ``models.train`` stays the one import for the recipe and its parts
__all__ = [
    "LAYOUT_SLOTS", "OBJECT_CLASSES", "OBJECT_FIELDS", "OBJECT_TYPES", "ScenePool",
    "TrainConfig", "TripletPool", "claim_layout", "encode_text_tokens", "frozen_all",
    "frozen_images", "frozen_texts", "layout_targets", "load_trained", "lr_at",
    "match_examples", "mined_examples", "multi_positive_loss", "object_loss", "object_targets",
    "plot_losses", "read_pairs", "render_pool", "render_triplets", "run", "save_weights",
    "scene_targets", "token_width", "train_encoder", "train_fusion", "train_fusion_pairs",
    "twin_loss", "word_swap",
]


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
        if cfg.init:
            clip.load_state_dict(load_file(cfg.init))
        enc_losses = []
        if cfg.encoder_steps:
            # with the curriculum, the plain phase is the plain recipe: the plain pool only
            first = render_pool(cfg.pool, work, size, 0.0 if cfg.robust_steps else cfg.randomise)
            enc_losses = train_encoder(clip, tokenizer, first, cfg, work)
            del first
        pool = render_pool(cfg.pool, work, size, cfg.randomise)
        trip = render_triplets(cfg.triplets, work, size, cfg.randomise)
        if cfg.robust_steps:
            enc_losses += train_encoder(clip, tokenizer, pool, cfg, work, robust=True)
        heads, fus_losses = train_fusion(clip, tokenizer, pool, trip, cfg, work)
    paths = save_weights(clip, heads, cfg, Path(cfg.out))
    if plot is not None:
        plot_losses(enc_losses, fus_losses, plot)
    return {"seconds": round(time.time() - t0, 1), "encoder_loss": enc_losses,
            "fusion_loss": fus_losses, **{k: str(v) for k, v in paths.items()}}


def load_trained(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (used by tests to check saved weights)."""
    return load_file(str(path))
