"""The model contract: one open_clip dual encoder plus optional fusion heads.

``load_model()`` returns a :class:`RetrievalModel` that encodes images and texts into L2-normalised
float32 vectors, exposes patch tokens for re-ranking, and runs the attention-fusion head for match
scores, composed queries and explanations.  Nothing here imports FastAPI or the index.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from .errors import FusionUnavailable, ModelLoadError
from .fusion import Batch, FusionConfig, FusionHeads
from .towers import visual_forward

__all__ = ["DEFAULT_MODEL", "RetrievalModel", "load_model", "rerank_scores", "visual_forward"]

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"
WEIGHTS_DIR = PACKAGE_DIR / "weights"
DEFAULT_MODEL = "fusion-tiny"
FUSION_KIND = "attention"

_registered = False
_register_lock = threading.Lock()


def register_configs() -> None:
    """Register the bundled architecture JSON files with open_clip (idempotent)."""
    global _registered
    with _register_lock:
        if not _registered:
            open_clip.add_model_config(CONFIG_DIR)
            _registered = True


def native_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(precision: str, device: str) -> torch.dtype:
    """Map the precision setting (auto | fp32 | bf16) to a torch dtype for the encoders."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ModelLoadError(f"unknown precision {precision!r}; use auto, fp32 or bf16")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if native_bf16() else torch.float32


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


def _text_tower(clip: Any) -> torch.nn.ModuleList:
    """The modules that only the text encoder uses (open_clip's CLIP layout)."""
    mods = [clip.token_embedding, clip.transformer, clip.ln_final]
    if isinstance(getattr(clip, "text_projection", None), torch.nn.Module):
        mods.append(clip.text_projection)
    holder = torch.nn.ModuleList(mods)
    for name in ("positional_embedding", "text_projection"):
        p = getattr(clip, name, None)
        if isinstance(p, torch.nn.Parameter):
            holder.register_parameter(name, p)
    return holder


def quicker_text_dtype(clip: Any, dtype: torch.dtype, reps: int = 10) -> torch.dtype:
    """``dtype`` or float32, whichever runs one short query through the text blocks faster.

    A one-query forward multiplies a handful of token rows by each weight matrix. On a wide
    model (ViT-B-32) that is bound by reading the weights, which bf16 halves; on a narrow one
    (fusion-tiny) bf16's per-call overhead costs more than the arithmetic it saves. Timed on the
    fp32 weights and a bf16 copy of the blocks, once per process and block shape; float32 must
    win by 20 % to be kept.
    """
    if not (plain_text_tower(clip) and lean_blocks_apply(clip.transformer)):
        return dtype
    width = int(clip.token_embedding.weight.shape[1])
    transformer = clip.transformer
    blocks = transformer.resblocks
    shape = (width, len(blocks), blocks[0].attn.num_heads,
             int(blocks[0].mlp[0].weight.shape[0]), dtype)
    with _QUICKER_LOCK:
        if shape not in _QUICKER:  # the answer depends on the shapes, not on the weights
            _QUICKER[shape] = _time_text_dtypes(transformer, width, dtype, reps)
        return _QUICKER[shape]


_QUICKER: dict[tuple[Any, ...], torch.dtype] = {}
_QUICKER_LOCK = threading.Lock()


def _time_text_dtypes(transformer: Any, width: int, dtype: torch.dtype, reps: int
                      ) -> torch.dtype:
    copy = _copy_blocks(transformer.resblocks, dtype)
    x = torch.randn(1, 8, width)
    runs = ((torch.float32, transformer.resblocks, x), (dtype, copy, x.to(dtype)))
    times = {dt: math.inf for dt, _, _ in runs}
    with torch.inference_mode():
        for _ in range(3):  # the first calls of each precision set up kernels
            for _, blocks, xs in runs:
                causal_blocks(blocks, xs)
        for _ in range(reps):  # alternated, so a busy moment does not favour one side
            for dt, blocks, xs in runs:
                t0 = time.perf_counter()
                causal_blocks(blocks, xs)
                times[dt] = min(times[dt], time.perf_counter() - t0)
    return torch.float32 if times[torch.float32] < 0.8 * times[dtype] else dtype


def _copy_blocks(blocks: Sequence[Any], dtype: torch.dtype) -> torch.nn.ModuleList:
    import copy

    return torch.nn.ModuleList(copy.deepcopy(b).to(dtype) for b in blocks)


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


# Re-rank score = RERANK_COS * cosine + RERANK_MATCH * raw match logit. Chosen on validation
# splits only (500-image galleries, weights 0.25-8 and the head alone): R@1 on ood-val 0.442 at
# 0.5 -> 0.458 at 1.0 (0.430 by the head alone), on the in-distribution val split 0.956 -> 0.958.
# Fusion refines the dual-encoder order rather than replacing it.
RERANK_COS = 30.0
RERANK_MATCH = 1.0


def rerank_scores(cosines: np.ndarray, probs: np.ndarray, temperature: float = 1.0
                  ) -> np.ndarray:
    """Blend dual-encoder cosines with attention-fusion match probabilities (higher is better).

    ``temperature`` is the one ``probs`` were calibrated with (``RetrievalModel.temperature``):
    the blend reads the raw logit back, so calibration never changes the order of the hits.
    """
    p = np.clip(np.asarray(probs, np.float64), 1e-9, 1 - 1e-9)
    return (RERANK_COS * np.asarray(cosines, np.float64)
            + RERANK_MATCH * temperature * np.log(p / (1 - p)))


def bundled_paths(name: str) -> tuple[Path, Path, Path]:
    """(backbone weights, fusion weights, fusion config) bundled for ``name``."""
    return (
        WEIGHTS_DIR / f"{name}.safetensors",
        WEIGHTS_DIR / f"{name}.fusion.safetensors",
        WEIGHTS_DIR / f"{name}.fusion.json",
    )


class RetrievalModel:
    """A loaded dual encoder with its preprocessing, tokenizer and (optional) fusion heads."""

    def __init__(
        self,
        name: str,
        clip: Any,
        tokenizer: Any,
        *,
        trained: bool,
        fusion: FusionHeads | None = None,
        dtype: torch.dtype = torch.float32,
        text_dtype: torch.dtype | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.name = name
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.trained = trained
        self.fusion = fusion.eval() if fusion is not None else None
        self.dtype = dtype
        self.device = torch.device(device)
        self.batch_size = batch_size
        visual = clip.visual
        cfg = open_clip.get_model_preprocess_cfg(clip)
        size = cfg.get("size", 224)
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = np.asarray(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), np.float32)
        self.std = np.asarray(cfg.get("std", open_clip.OPENAI_DATASET_STD), np.float32)
        visual.output_tokens = True
        self.token_layer = fusion.cfg.token_layer if fusion is not None else -1
        self.text_dtype = text_dtype or dtype
        if self.text_dtype == dtype:
            self.clip.to(dtype)
        else:  # the text tower keeps its own precision; everything else takes ``dtype``
            tower = _text_tower(clip)
            text = {id(p) for p in tower.parameters()} | {id(b) for b in tower.buffers()}
            # buffers too: a CNN's batch-norm statistics must match its weights' precision
            for p in [*clip.parameters(), *clip.buffers()]:
                if id(p) not in text and p.is_floating_point():
                    p.data = p.data.to(dtype)
            tower.to(self.text_dtype)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *self.image_size, device=self.device)
            pooled, tokens = visual_forward(visual, probe.to(self._enc_dtype), self.token_layer)
        self.embed_dim = int(pooled.shape[-1])
        self.num_image_tokens = int(tokens.shape[1])
        self.image_token_width = int(tokens.shape[2])
        self.text_width = int(clip.token_embedding.weight.shape[1]) if self._plain_text else 0
        self.context_length = int(getattr(clip, "context_length", 77))
        self._lean_text = self._plain_text and lean_blocks_apply(clip.transformer)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def _enc_dtype(self) -> torch.dtype:
        return self.dtype

    @property
    def _plain_text(self) -> bool:
        return plain_text_tower(self.clip)

    @property
    def has_fusion(self) -> bool:
        return self.fusion is not None

    @property
    def temperature(self) -> float:
        """The match head's calibration temperature (``models.calibrate``; 1.0 if none)."""
        return float(getattr(self.fusion, "temperature", 1.0))

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Match probabilities from raw match logits: ``sigmoid(logit / T + bias)``."""
        bias = float(getattr(self.fusion, "match_bias", 0.0))
        return torch.sigmoid(logits / self.temperature + bias)

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "dim": self.embed_dim,
            "trained": self.trained,
            "has_fusion": self.has_fusion,
            "fusion": FUSION_KIND if self.has_fusion else "late",
            "precision": self.precision,
            "image_size": list(self.image_size),
            "image_tokens": [self.num_image_tokens, self.image_token_width],
            "context_length": self.context_length,
        }

    # ---- preprocessing ------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize the shorter side (bicubic), centre-crop and normalise, as open_clip does."""
        h, w = self.image_size
        out = np.empty((len(images), 3, h, w), np.float32)
        for i, img in enumerate(images):
            img = img if img.mode == "RGB" else img.convert("RGB")
            if img.size != (w, h):
                scale = max(w / img.width, h / img.height)
                nw, nh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
                img = img.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - w) // 2, (nh - h) // 2
                img = img.crop((left, top, left + w, top + h))
            arr = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
            out[i] = ((arr - self.mean) / self.std).transpose(2, 0, 1)
        return torch.from_numpy(out)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenise to the model's context length; longer texts are truncated, never rejected."""
        clean = [t.replace("\x00", " ") for t in texts]
        return self.tokenizer(clean)

    # ---- encoders (torch) ---------------------------------------------------------------------
    def _images_forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = visual_forward(self.clip.visual, pixels.to(self.device, self._enc_dtype),
                                        self.token_layer)
        return F.normalize(pooled.float(), dim=-1), tokens

    def _texts_forward(self, ids: torch.Tensor) -> TextBatch:
        ids = ids.to(self.device)
        if not self._plain_text:
            emb = self.clip.encode_text(ids)
            empty = torch.zeros(ids.shape[0], 1, 1)
            return TextBatch(empty, empty[..., 0].bool(), empty[:, 0, 0].long(), F.normalize(
                emb.float(), dim=-1))
        c = self.clip
        eot = ids.argmax(dim=-1)
        # The text tower is causal and read at the end-of-text token: padding after the longest
        # text in the batch cannot change any output, so it is not computed.
        length = int(eot.max()) + 1
        ids = ids[:, :length]
        dt = self.text_dtype
        x = c.token_embedding(ids).to(dt)
        x = x + c.positional_embedding[:length].to(dt)
        if self._lean_text:
            x = causal_blocks(c.transformer.resblocks, x)
        else:
            x = c.transformer(x, attn_mask=c.attn_mask[:length, :length].to(dt))
        x = c.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = c.text_projection
        pooled = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
        pad = torch.arange(length, device=x.device)[None, :] > eot[:, None]
        return TextBatch(x, pad, eot, F.normalize(pooled.float(), dim=-1))

    def _batches(self, n: int) -> range:
        return range(0, n, self.batch_size)

    # ---- public numpy API ---------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32 L2-normalised image embeddings."""
        return self.encode_images_with_tokens(images)[0]

    @torch.inference_mode()
    def encode_images_with_tokens(
        self, images: Sequence[Image.Image]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (N, D) float32 and patch tokens (N, T, W) float16 in one forward pass."""
        embs = np.zeros((len(images), self.embed_dim), np.float32)
        toks = np.zeros((len(images), self.num_image_tokens, self.image_token_width), np.float16)
        for s in self._batches(len(images)):
            emb, tok = self._images_forward(self.preprocess(images[s : s + self.batch_size]))
            embs[s : s + len(emb)] = emb.numpy()
            toks[s : s + len(emb)] = tok.float().numpy().astype(np.float16)
        return embs, toks

    @torch.inference_mode()
    def image_tokens(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, T, W) float16 patch tokens, stored for re-ranking."""
        return self.encode_images_with_tokens(images)[1]

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 L2-normalised text embeddings."""
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        for s in self._batches(len(texts)):
            out[s : s + self.batch_size] = self._texts_forward(
                self.tokenize(texts[s : s + self.batch_size])
            ).emb.numpy()
        return out

    # ---- fusion -------------------------------------------------------------------------------
    def _fusion_batch(
        self, tokens: np.ndarray, embeddings: np.ndarray, texts: Sequence[str]
    ) -> Batch:
        tb = self._texts_forward(self.tokenize(texts))
        n = len(tokens)
        if len(texts) == 1 and n > 1:
            tb = TextBatch(
                tb.tokens.expand(n, -1, -1),
                tb.pad.expand(n, -1),
                tb.eot.expand(n),
                tb.emb.expand(n, -1),
            )
        return Batch(
            image_tokens=torch.from_numpy(np.asarray(tokens, np.float32)),
            image_emb=torch.from_numpy(np.asarray(embeddings, np.float32)),
            text_tokens=tb.tokens.float(),
            text_mask=tb.pad,
            text_eot=tb.eot,
            text_emb=tb.emb,
        )

    @torch.inference_mode()
    def match(
        self, tokens: np.ndarray, texts: Sequence[str], embeddings: np.ndarray | None = None
    ) -> np.ndarray:
        """(N,) attention-fusion match probability of each image (as tokens) with its text,
        calibrated by the head's temperature (``models.calibrate``).

        ``texts`` has N entries, or one that is paired with every image.  Without fusion weights
        this falls back to late fusion, which needs ``embeddings``.
        """
        if self.fusion is None:
            if embeddings is None:
                raise FusionUnavailable("this model has no fusion head; pass embeddings")
            t = self.encode_texts(texts)
            return ((embeddings * t).sum(-1) + 1.0) / 2.0
        emb = embeddings if embeddings is not None else np.zeros((len(tokens), self.embed_dim))
        b = self._fusion_batch(tokens, emb, texts)
        return self.calibrated(self.fusion.score(FUSION_KIND, b)).numpy()

    @torch.inference_mode()
    def compose_from(
        self, tokens: np.ndarray, embeddings: np.ndarray, texts: Sequence[str]
    ) -> np.ndarray:
        """(N, D) composed query embeddings from stored image tokens and embeddings."""
        if self.fusion is None or not self.fusion.composes:
            t = self.encode_texts(texts)
            q = embeddings + t
            return q / np.linalg.norm(q, axis=-1, keepdims=True)
        b = self._fusion_batch(tokens, embeddings, texts)
        return self.fusion.compose(FUSION_KIND, b).numpy().astype(np.float32)

    @torch.inference_mode()
    def compose(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """(N, D) L2-normalised composed query embeddings for image + modifying text."""
        emb, tok = self.encode_images_with_tokens(images)
        return self.compose_from(tok, emb, texts)

    @torch.inference_mode()
    def explain(self, tokens: np.ndarray, embedding: np.ndarray, text: str) -> dict[str, Any]:
        """Cross-attention of the text's end token over the image patches, as a grid."""
        if self.fusion is None:
            raise FusionUnavailable("this model has no attention-fusion weights to explain with")
        b = self._fusion_batch(tokens[None], embedding[None], [text])
        head = self.fusion.heads[FUSION_KIND]
        feat, weights = head.readout(b, need_weights=True)  # type: ignore[operator]
        logit = head.score_from(feat, b)  # type: ignore[operator]
        prob = float(self.calibrated(logit).squeeze())
        w = weights[0].float().numpy() if weights is not None else np.zeros(tokens.shape[0])
        side = int(math.isqrt(len(w)))
        grid = w[: side * side].reshape(side, side) if side * side == len(w) else w[None, :]
        return {"probability": prob, "grid": grid.tolist(), "rows": grid.shape[0],
                "cols": grid.shape[1]}


def _load_fusion(path: Path, cfg_path: Path) -> FusionHeads:
    try:
        meta = json.loads(cfg_path.read_text())
        cfg = FusionConfig(**meta["config"])
        heads = FusionHeads(cfg, tuple(meta.get("kinds", ["attention"])))
        heads.load_state_dict(load_file(str(path)), strict=True)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load fusion weights {path}: {exc}") from exc
    heads.composes = bool(meta.get("compose", True))
    calibration = meta.get("calibration", {})
    heads.temperature = float(calibration.get("temperature", 1.0))
    heads.match_bias = float(calibration.get("bias", 0.0))
    return heads.float()


def load_model(
    name: str = DEFAULT_MODEL,
    pretrained: str | None = None,
    *,
    fusion: str | None = None,
    precision: str = "auto",
    device: str = "cpu",
    batch_size: int = 64,
    image_size: int | None = None,
) -> RetrievalModel:
    """Load an open_clip model by name with optional weights and fusion heads.

    ``pretrained`` is an open_clip tag or a checkpoint file; for a bundled config (``fusion-tiny``)
    the bundled weights are used when it is None.  ``fusion`` is a fusion-head safetensors file
    (its JSON config beside it, same stem); the bundled one is used when present.  ViT and CNN
    image towers both work (``models.towers``).  ``image_size`` overrides the config's input
    size (open_clip's ``force_image_size``; weights must have been trained at that size).

    Raises:
        ModelLoadError: unknown model name, unreadable weights, or a tag that needs a download.
    """
    register_configs()
    backbone, bundled_fusion, bundled_fusion_cfg = bundled_paths(name)
    if pretrained is None and backbone.is_file():
        pretrained = str(backbone)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # without weights, the same random model in every process
            clip = open_clip.create_model(name, pretrained=pretrained, device=device,
                                          force_image_size=image_size)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # open_clip raises many types for unknown names and bad files
        raise ModelLoadError(f"could not load model {name!r} (pretrained={pretrained}): {exc}") \
            from exc
    heads = None
    if fusion is not None:
        fpath = Path(fusion)
        heads = _load_fusion(fpath, fpath.with_name(fpath.name.replace(".safetensors", ".json")))
    elif bundled_fusion.is_file() and pretrained == str(backbone):
        try:
            heads = _load_fusion(bundled_fusion, bundled_fusion_cfg)
        except ModelLoadError as exc:  # serve with late fusion rather than not at all
            log.error("bundled fusion heads unusable, falling back to late fusion: %s", exc)
    dtype = resolve_dtype(precision, device)
    text_dtype = dtype
    if precision == "auto" and dtype != torch.float32 and device == "cpu":
        text_dtype = quicker_text_dtype(clip, dtype)
    return RetrievalModel(
        name, clip, tokenizer, trained=pretrained is not None, fusion=heads, dtype=dtype,
        text_dtype=text_dtype, device=device, batch_size=batch_size,
    )
