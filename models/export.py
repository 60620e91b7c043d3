"""The encoders and the attention-fusion match head as ONNX graphs, cached on disk by weights.

Three graphs, each with a dynamic batch (and, for texts, a dynamic length):

* ``image.onnx``: pixels (N, 3, H, W) -> L2-normalised embedding (N, D) and patch tokens (N, T, W);
* ``text.onnx``: token ids trimmed to the longest text (N, L) -> final-layer tokens (N, L, W) and
  the L2-normalised embedding (N, D), read at the end-of-text token as ``RetrievalModel`` does;
* ``match.onnx``: the attention head's raw match logit (N,) of N images (tokens, embeddings)
  against N texts or one text (:class:`MatchGraph`).

The graphs are exported from the fp32 weights (``torch.onnx.export``, the TorchScript exporter,
opset :data:`OPSET`). They live in ``<cache>/<name>-<weights hash>/`` so a new set of weights
never runs an old graph, and a second start reuses the first one's export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import AttentionFusion, FusionBlock, FusionHeads
from .text_tower import causal_blocks, lean_blocks_apply, plain_text_tower
from .towers import visual_forward

log = logging.getLogger(__name__)

OPSET = 17
# bumped whenever the exported graphs change meaning, so old caches are not reused
EXPORT_VERSION = 3
GRAPHS = ("image", "text", "match")
CACHE_ENV = "FUSION_RUNTIME_CACHE"
_export_lock = threading.Lock()


class ExportError(RuntimeError):
    """The model cannot be exported (an unsupported tower), or the export failed."""


def default_cache_dir() -> Path:
    """``$FUSION_RUNTIME_CACHE``, else ``$XDG_CACHE_HOME/fusion-search/runtimes`` (``~/.cache``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusion-search" / "runtimes"


def weights_hash(clip: nn.Module, fusion: nn.Module | None, extra: str = "") -> str:
    """A sha256 (16 hex digits) over every tensor's name, shape, dtype and bytes."""
    h = hashlib.sha256(f"v{EXPORT_VERSION}|{extra}".encode())
    for module in (clip, fusion):
        if module is None:
            continue
        for key, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{key}|{tuple(t.shape)}|{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class ImageGraph(nn.Module):
    """Pixels -> (normalised embedding, patch tokens), as ``RetrievalModel._images_forward``."""

    def __init__(self, visual: nn.Module, token_layer: int) -> None:
        super().__init__()
        self.visual = visual
        self.token_layer = token_layer

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = visual_forward(self.visual, pixels, self.token_layer)
        return F.normalize(pooled, dim=-1), tokens


class TextGraph(nn.Module):
    """Trimmed token ids -> (final-layer tokens, normalised embedding at the end-of-text token).

    The causal mask comes from the attention kernel (``is_causal``), so the graph has no mask
    to slice and any length up to the context runs."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.blocks = clip.transformer.resblocks
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eot = ids.argmax(dim=-1)
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        x = self.ln_final(causal_blocks(self.blocks, x))
        pooled = torch.gather(x, 1, eot[:, None, None].expand(-1, 1, x.shape[2]))[:, 0]
        proj = self.text_projection
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return x, F.normalize(pooled, dim=-1)


class TraceableAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch first, no attention weights out) in plain operations.

    Traced, the module's own forward bakes the example's text length into its reshapes, so a
    graph exported with one length fails on another; this one reshapes by -1 instead, and a
    ``key_padding_mask`` of one row masks every batch entry alike. Same weights, same
    arithmetic: the exported head matches the torch one to rounding."""

    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attn = attn
        self.heads = attn.num_heads

    def _split(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        n = x.shape[0]
        return F.linear(x, w, b).reshape(n, -1, self.heads, w.shape[0] // self.heads
                                          ).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, **_: Any
                ) -> tuple[torch.Tensor, None]:
        a = self.attn
        wq, wk, wv = a.in_proj_weight.chunk(3)
        bq, bk, bv = a.in_proj_bias.chunk(3) if a.in_proj_bias is not None else (None,) * 3
        qh, kh, vh = self._split(q, wq, bq), self._split(k, wk, bk), self._split(v, wv, bv)
        scores = qh @ kh.transpose(-1, -2) * (qh.shape[-1] ** -0.5)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2)
        return a.out_proj(out.reshape(q.shape[0], -1, q.shape[2])), None


def _rows_at(x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Each row's end-of-text token (B, 1, W) of ``x`` (B, L, W); ``eot`` is (B,) or (1,)."""
    index = eot.expand(x.shape[0])[:, None, None].expand(-1, 1, x.shape[2])
    return torch.gather(x, 1, index)


def _cross_attention(attn: nn.MultiheadAttention, norm: nn.LayerNorm, q: torch.Tensor,
                     patches: torch.Tensor) -> torch.Tensor:
    """:func:`models.fusion.factored_cross_attention` as broadcast matmuls that trace with
    dynamic sizes: ``q`` (M, L, W) holds one text row per image (M = N) or one text for every
    image (M = 1); ``patches`` (N, T, W) the images' patches standardised without the block's
    LayerNorm affine, which is folded into the key and value weights here instead of applied
    to every patch: with ``norm(x) = n * g + b``, a query's scores change by a constant per
    row (which softmax drops) and the values by ``W_v b``, since a row of weights sums to 1.
    Returns (N, L, W)."""
    width = patches.shape[2]
    heads = attn.num_heads
    d = width // heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, _, b_v = (attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None
                   else (None, None, None))
    if norm.weight is not None:
        w_k, w_v = w_k * norm.weight, w_v * norm.weight
    if norm.bias is not None:
        shift = attn.in_proj_weight.chunk(3)[2] @ norm.bias
        b_v = shift if b_v is None else b_v + shift
    m = q.shape[0]
    qh = F.linear(q, w_q, b_q).reshape(-1, heads, d).transpose(0, 1)  # (H, M*L, d)
    q_img = torch.bmm(qh, w_k.reshape(heads, d, width)) * (d**-0.5)  # (H, M*L, W)
    q_img = q_img.reshape(heads, m, -1, width).transpose(0, 1).reshape(m, -1, width)
    probs = torch.softmax(torch.matmul(q_img, patches.transpose(1, 2)), dim=-1)  # (N, H*L, T)
    mixed = torch.matmul(probs, patches).reshape(patches.shape[0], heads, -1, width)
    out = torch.matmul(mixed, w_v.reshape(heads, d, width).transpose(1, 2))  # (N, H, L, d)
    if b_v is not None:
        out = out + b_v.reshape(heads, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(patches.shape[0], -1, width))


def _image_side(head: AttentionFusion, image_tokens: torch.Tensor) -> torch.Tensor:
    """The patches every block's cross-attention reads, standardised once: ``image_in`` with
    its bias, position and coordinates added as one (T, W) constant, then LayerNorm without
    affine (each block's own ``ln_image`` affine goes into its weights,
    :func:`_cross_attention`)."""
    bias: torch.Tensor | float = (head.image_in.bias if head.image_in.bias is not None
                                  else 0.0)
    if head.image_pos is not None:
        bias = bias + head.image_pos
    if head.image_xy is not None:
        bias = bias + head.image_xy()
    image = F.linear(image_tokens, head.image_in.weight) + bias
    blocks: list[FusionBlock] = list(head.blocks)  # type: ignore[arg-type]
    eps = blocks[0].ln_image.eps if blocks else 1e-5
    return F.layer_norm(image, (head.image_in.out_features,), eps=eps)


class MatchGraph(nn.Module):
    """The attention head's raw match logit (N,) of N images against N texts (pairs) or one
    text (M = 1: a re-rank's one query against every image).

    The head's inference path (``AttentionFusion.readout`` without autograd) in operations
    that trace with dynamic sizes and broadcast one text over the images: the text rows are
    computed once until they meet the images, the cross-attention is factored (the few text
    queries carried into the patches' width instead of every patch projected), the patches
    are standardised once for every block (each block's LayerNorm affine folded into its
    weights: median 11.5 against 12.5 ms for a re-rank of 50 with a LayerNorm per block, one
    ONNX Runtime thread, AMD EPYC) and the last block computes the end-of-text row alone.
    Exported as the module's training path it ran slower on ONNX Runtime than torch's
    inference path did (0.76x on fusion-tiny's re-rank of 50), so ``auto`` never chose a
    runtime for the match.
    """

    def __init__(self, heads: FusionHeads, kind: str) -> None:
        super().__init__()
        head = heads.heads[kind]
        if not isinstance(head, AttentionFusion):
            raise ExportError(f"only the attention head's match is exported, not {kind!r}")
        self.head = head
        blocks: list[FusionBlock] = list(head.blocks)  # type: ignore[arg-type]
        self.self_attn = nn.ModuleList(TraceableAttention(b.self_attn) for b in blocks)

    def forward(self, image_tokens: torch.Tensor, image_emb: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor, text_eot: torch.Tensor,
                text_emb: torch.Tensor) -> torch.Tensor:
        h = self.head
        x = h.text_in(text_tokens)
        patches = _image_side(h, image_tokens)
        blocks: list[FusionBlock] = list(h.blocks)  # type: ignore[arg-type]
        for i, block in enumerate(blocks):
            hx = block.ln_self(x)
            attn = self.self_attn[i]
            if i == len(blocks) - 1:  # only the end-of-text row is read out
                x = _rows_at(x, text_eot) + attn(_rows_at(hx, text_eot), hx, hx,
                                                 key_padding_mask=text_mask)[0]
            else:
                x = x + attn(hx, hx, hx, key_padding_mask=text_mask)[0]
            x = x + _cross_attention(block.cross_attn, block.ln_image, block.ln_cross(x),
                                     patches)
            x = x + block.ff(block.ln_ff(x))
        feat = h.ln_out((x if blocks else _rows_at(x, text_eot))[:, 0])
        cos = (image_emb * text_emb).sum(-1)
        return h.match_head(feat).squeeze(-1) + h.cos_scale * cos  # type: ignore[no-any-return]


def exportable(clip: Any) -> str | None:
    """None when this backbone's towers can be exported, else why not."""
    if not plain_text_tower(clip) or not lean_blocks_apply(clip.transformer):
        return "only open_clip's plain causal text tower is exported"
    return None


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
            inputs: dict[str, dict[int, str]], outputs: dict[str, dict[int, str]]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    # traced with autograd on: under inference mode nn.MultiheadAttention takes its fused fast
    # path, an operator ONNX has no counterpart for
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        torch.onnx.export(module.eval(), args, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes={**inputs, **outputs}, do_constant_folding=True)
    os.replace(tmp, path)


def export_graphs(clip: Any, fusion: FusionHeads | None, kind: str, out: Path,
                  image_size: tuple[int, int], token_layer: int) -> dict[str, Path]:
    """Export the image, text and (with ``fusion``) match graphs of fp32 modules into ``out``.

    Raises:
        ExportError: an unsupported tower, or torch.onnx failed.
    """
    why = exportable(clip)
    if why:
        raise ExportError(why)
    out.mkdir(parents=True, exist_ok=True)
    paths = {g: out / f"{g}.onnx" for g in GRAPHS if g != "match" or fusion is not None}
    n = {0: "n"}
    try:
        pixels = torch.zeros(2, 3, *image_size)
        _export(ImageGraph(clip.visual, token_layer), (pixels,), paths["image"],
                {"pixels": n}, {"embedding": n, "tokens": n})
        ids = torch.zeros(2, 7, dtype=torch.long)
        ids[:, 0], ids[0, 6], ids[1, 4] = 1, 2, 2  # argmax lands at the end-of-text token
        nl = {0: "n", 1: "length"}
        _export(TextGraph(clip), (ids,), paths["text"], {"ids": nl},
                {"tokens": nl, "embedding": n})
        if fusion is not None:
            with torch.no_grad():  # plain tensors: the export below traces with autograd on
                emb, tok = ImageGraph(clip.visual, token_layer)(pixels)
                ttok, temb = TextGraph(clip)(ids)
            pad = torch.arange(7)[None, :] > torch.tensor([6, 4])[:, None]
            args = (tok.float(), emb, ttok, pad, torch.tensor([6, 4]), temb)
            m, ml = {0: "m"}, {0: "m", 1: "length"}  # m: n texts, or 1 for every image
            _export(MatchGraph(fusion, kind), args, paths["match"],
                    {"image_tokens": n, "image_emb": n, "text_tokens": ml, "text_mask": ml,
                     "text_eot": m, "text_emb": m}, {"logit": n})
    except Exception as exc:  # torch.onnx raises many kinds
        raise ExportError(f"ONNX export failed: {exc}") from exc
    return paths


def cached_graphs(clip: Any, fusion: FusionHeads | None, kind: str, name: str,
                  image_size: tuple[int, int], token_layer: int,
                  cache_dir: Path | None = None) -> tuple[dict[str, Path], str]:
    """The exported graphs for these weights, exporting them once; and the weights hash.

    Raises:
        ExportError: as :func:`export_graphs`.
    """
    key = weights_hash(clip, fusion, f"{kind}|{image_size}|{token_layer}|{torch.__version__}")
    out = (cache_dir or default_cache_dir()) / f"{name.replace('/', '_')}-{key}"
    done = out / "export.json"
    with _export_lock:
        if not done.is_file():
            log.info("exporting %s to ONNX in %s", name, out)
            paths = export_graphs(clip, fusion, kind, out, image_size, token_layer)
            done.write_text(json.dumps({"model": name, "weights": key, "opset": OPSET,
                                        "graphs": sorted(paths)}) + "\n")
        graphs = json.loads(done.read_text())["graphs"]
    return {g: out / f"{g}.onnx" for g in graphs}, key
