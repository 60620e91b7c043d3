"""The loaded model: :class:`RetrievalModel` encodes images and texts into L2-normalised float32
vectors, exposes patch tokens for re-ranking, and runs the attention-fusion head for match
scores, composed queries and explanations.  Nothing here imports FastAPI or the index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from .ask import AnswerHeadsMixin
from .errors import FusionUnavailable
from .folded_match import FoldedMatch
from .fusion import AttentionFusion, Batch, FusionHeads, one_text_batch
from .precision import precision_name
from .runtimes import PARTS, Engine, as_tensors, texts_feed
from .text_tower import TextBatch, causal_blocks, lean_blocks_apply, plain_text_tower
from .towers import visual_forward

FUSION_KIND = "attention"


@dataclass(frozen=True)
class EncodedQuery:
    """One text query encoded once per request: its vector for the index search and its
    tokens for the fusion head's re-rank, so the re-rank does not run the text tower again."""

    text: str
    vector: np.ndarray  # (D,) float32, L2-normalised
    batch: TextBatch  # this text alone, trimmed after its end-of-text token


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


class RetrievalModel(AnswerHeadsMixin):
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
        precision_reason: str = "",
    ) -> None:
        self.name = name
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.trained = trained
        self.device = torch.device(device)
        self.fusion = fusion.to(self.device).eval() if fusion is not None else None
        self.dtype = dtype
        self.precision_reason = precision_reason
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
        self.engines: dict[str, Engine] = {}  # part (models.runtimes.PARTS) -> its engine
        self.runtime_reason = "torch"
        head = self.fusion.heads[FUSION_KIND] if self.fusion is not None and \
            FUSION_KIND in self.fusion.heads else None
        # torch's match at inference: the head's weights folded once, in the model's precision
        self._folded = (FoldedMatch(head).to(self.device, dtype).eval()
                        if isinstance(head, AttentionFusion) else None)

    def use_engine(self, engine: Engine | None, reason: str) -> None:
        """Run the encoders and the match head on ``engine`` (None: torch), and say why."""
        self.use_engines({p: engine for p in PARTS} if engine is not None else {}, reason)

    def use_engines(self, engines: Mapping[str, Engine], reason: str) -> None:
        """Run each part named in ``engines`` (images, text, match) on its engine and the
        others on torch, and say why."""
        unknown = set(engines) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; the parts are {PARTS}")
        self.engines = dict(engines)
        self.runtime_reason = reason

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
    def text_macs(self) -> int:
        """The text tower's multiply-adds per token (attention 4 w^2, MLP 8 w^2 per block;
        0 for a tower this cannot read)."""
        blocks = getattr(getattr(self.clip, "transformer", None), "resblocks", None)
        if not self._plain_text or blocks is None:
            return 0
        return 12 * len(blocks) * self.text_width**2

    @property
    def precision(self) -> str:
        """The image encoder's precision (where the bulk of the arithmetic is)."""
        images = self.engines.get("images")
        return images.precision if images is not None else precision_name(self.dtype)

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts this model runs: images, text, and match where it has a fusion head."""
        return PARTS if self.has_fusion else tuple(p for p in PARTS if p != "match")

    @property
    def runtime_parts(self) -> dict[str, str]:
        """What runs each part, with its precision: ``{"text": "onnxruntime fp32", ...}``."""
        out = {}
        for p in self.parts:
            e = self.engines.get(p)
            dtype = self.text_dtype if p == "text" else self.dtype
            out[p] = (f"{e.name} {e.precision}" if e is not None
                      else f"torch {precision_name(dtype)}")
        return out

    @property
    def runtime(self) -> str:
        """One runtime's name where it runs every part, else each runtime with its parts:
        ``onnxruntime (text), torch (images, match)``."""
        names = {p: (e.name if (e := self.engines.get(p)) is not None else "torch")
                 for p in self.parts}
        if len(set(names.values())) == 1:
            return next(iter(names.values()))
        grouped: dict[str, list[str]] = {}
        for p, n in names.items():
            grouped.setdefault(n, []).append(p)
        return ", ".join(f"{n} ({', '.join(ps)})" for n, ps in grouped.items())

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "dim": self.embed_dim,
            "trained": self.trained,
            "has_fusion": self.has_fusion,
            "fusion": FUSION_KIND if self.has_fusion else "late",
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "device": str(self.device),
            "runtime": self.runtime,
            "runtime_parts": self.runtime_parts,
            "runtime_reason": self.runtime_reason,
            "threads": torch.get_num_threads(),
            "image_size": list(self.image_size),
            "image_tokens": [self.num_image_tokens, self.image_token_width],
            "context_length": self.context_length,
            **self.answer_info(),
        }

    # ---- preprocessing ------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize the shorter side (bicubic), centre-crop and normalise, as open_clip does."""
        h, w = self.image_size
        pixels = np.empty((len(images), h, w, 3), np.uint8)
        for i, img in enumerate(images):
            img = img if img.mode == "RGB" else img.convert("RGB")
            if img.size != (w, h):
                scale = max(w / img.width, h / img.height)
                nw, nh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
                img = img.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - w) // 2, (nh - h) // 2
                img = img.crop((left, top, left + w, top + h))
            pixels[i] = np.asarray(img)
        # (x / 255 - mean) / std as one multiply-add per channel over the whole batch: a third
        # of the per-image float passes it replaces
        out = np.empty((len(images), 3, h, w), np.float32)
        scale = np.reciprocal(255.0 * self.std, dtype=np.float32)
        shift = np.divide(-self.mean, self.std, dtype=np.float32)
        for c in range(3):
            np.multiply(pixels[..., c], scale[c], out=out[:, c], casting="unsafe")
            out[:, c] += shift[c]
        return torch.from_numpy(out)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenise to the model's context length; longer texts are truncated, never rejected."""
        clean = [t.replace("\x00", " ") for t in texts]
        return self.tokenizer(clean)

    # ---- encoders (torch) ---------------------------------------------------------------------
    def _images_forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        engine = self.engines.get("images")
        if engine is not None:
            emb, tok = as_tensors(*engine.images(pixels.numpy()))
            return emb, tok
        pooled, tokens = visual_forward(self.clip.visual, pixels.to(self.device, self._enc_dtype),
                                        self.token_layer)
        return F.normalize(pooled.float(), dim=-1), tokens

    def _texts_forward(self, ids: torch.Tensor) -> TextBatch:
        ids = ids.to(self.device)
        if not self._plain_text:
            emb = self.clip.encode_text(ids)
            empty = torch.zeros(ids.shape[0], 1, 1, device=self.device)
            return TextBatch(empty, empty[..., 0].bool(), empty[:, 0, 0].long(), F.normalize(
                emb.float(), dim=-1))
        engine = self.engines.get("text")
        if engine is not None:
            trimmed, eot_np, pad_np = texts_feed(ids.cpu())
            tok, emb, eot_t, pad_t = as_tensors(*engine.texts(trimmed), eot_np, pad_np)
            return TextBatch(tok, pad_t, eot_t, emb)
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
            embs[s : s + len(emb)] = emb.cpu().numpy()
            toks[s : s + len(emb)] = tok.float().cpu().numpy().astype(np.float16)
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
            ).emb.cpu().numpy()
        return out

    @torch.inference_mode()
    def encode_queries(self, texts: Sequence[str]) -> list[EncodedQuery]:
        """Each text's vector and tokens from one encoder pass per batch (the service's
        queries: searched with the vector, re-ranked with the tokens)."""
        out: list[EncodedQuery] = []
        for s in self._batches(len(texts)):
            chunk = texts[s : s + self.batch_size]
            tb = self._texts_forward(self.tokenize(chunk))
            vectors = tb.emb.cpu().numpy()
            out.extend(EncodedQuery(t, vectors[j], tb.row(j)) for j, t in enumerate(chunk))
        return out

    # ---- fusion -------------------------------------------------------------------------------
    def _fusion_batch(
        self, tokens: np.ndarray, embeddings: np.ndarray, texts: Sequence[str] | EncodedQuery
    ) -> Batch:
        tb = (texts.batch if isinstance(texts, EncodedQuery)
              else self._texts_forward(self.tokenize(texts)))
        n = len(tokens)
        if tb.tokens.shape[0] == 1 and n > 1:
            tb = TextBatch(
                tb.tokens.expand(n, -1, -1),
                tb.pad.expand(n, -1),
                tb.eot.expand(n),
                tb.emb.expand(n, -1),
            )
        # torch converts float16 to float32 several times faster than NumPy does
        return Batch(
            image_tokens=torch.from_numpy(np.ascontiguousarray(tokens)).to(self.device,
                                                                            torch.float32),
            image_emb=torch.from_numpy(np.asarray(embeddings, np.float32)).to(self.device),
            text_tokens=tb.tokens.float(),
            text_mask=tb.pad,
            text_eot=tb.eot,
            text_emb=tb.emb,
        )

    @torch.inference_mode()
    def match(
        self, tokens: np.ndarray, texts: Sequence[str] | EncodedQuery,
        embeddings: np.ndarray | None = None
    ) -> np.ndarray:
        """(N,) attention-fusion match probability of each image (as tokens) with its text,
        calibrated by the head's temperature (``models.calibrate``).

        ``texts`` has N entries, or one that is paired with every image, or is one query
        already encoded (``encode_queries``). Without fusion weights this falls back to late
        fusion, which needs ``embeddings``.
        """
        if self.fusion is None:
            if embeddings is None:
                raise FusionUnavailable("this model has no fusion head; pass embeddings")
            t = (texts.vector[None] if isinstance(texts, EncodedQuery)
                 else self.encode_texts(texts))
            return ((embeddings * t).sum(-1) + 1.0) / 2.0
        emb = embeddings if embeddings is not None else np.zeros((len(tokens), self.embed_dim))
        b = self._fusion_batch(tokens, emb, texts)
        return self.calibrated(self.match_logits(b)).cpu().numpy()

    @torch.inference_mode()
    def match_logits(self, b: Batch) -> torch.Tensor:
        """The attention head's raw match logits (N,) for a fusion batch, on the engine when
        one runs the model. Raises FusionUnavailable without fusion weights."""
        if self.fusion is None:
            raise FusionUnavailable("this model has no fusion head")
        engine = self.engines.get("match")
        if engine is not None and not engine.has_match:
            engine = None
        if engine is None and self._folded is None:
            return self.fusion.score(FUSION_KIND, b)
        # one text for every image goes in as one row: the graph broadcasts it
        rows = slice(0, 1) if one_text_batch(b) else slice(None)
        feeds = {"image_tokens": b.image_tokens, "image_emb": b.image_emb,
                 "text_tokens": b.text_tokens[rows], "text_mask": b.text_mask[rows],
                 "text_eot": b.text_eot[rows], "text_emb": b.text_emb[rows]}
        if engine is not None:
            arrays = {k: np.ascontiguousarray(v.cpu().numpy()) for k, v in feeds.items()}
            return torch.from_numpy(engine.match(arrays))
        assert self._folded is not None
        dtype = self._folded.dtype
        return self._folded(*(v.to(dtype) if v.is_floating_point() else v
                              for v in feeds.values())).float()

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
        return self.fusion.compose(FUSION_KIND, b).cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def compose(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """(N, D) L2-normalised composed query embeddings for image + modifying text."""
        emb, tok = self.encode_images_with_tokens(images)
        return self.compose_from(tok, emb, texts)

    @torch.inference_mode()
    def explain(self, tokens: np.ndarray, embedding: np.ndarray, text: str) -> dict[str, Any]:
        """Cross-attention of the text's end token over the image patches, as a grid, and the
        match probability re-ranking gives the pair."""
        if self.fusion is None:
            raise FusionUnavailable("this model has no attention-fusion weights to explain with")
        b = self._fusion_batch(tokens[None], embedding[None], [text])
        head = self.fusion.heads[FUSION_KIND]
        _, weights = head.readout(b, need_weights=True)  # type: ignore[operator]
        # the probability from the path that scored the hit (precision, runtime), so the page
        # shows one figure for both
        prob = float(self.calibrated(self.match_logits(b)).squeeze())
        w = weights[0].float().cpu().numpy() if weights is not None else np.zeros(tokens.shape[0])
        side = int(math.isqrt(len(w)))
        grid = w[: side * side].reshape(side, side) if side * side == len(w) else w[None, :]
        return {"probability": prob, "grid": grid.tolist(), "rows": grid.shape[0],
                "cols": grid.shape[1]}
