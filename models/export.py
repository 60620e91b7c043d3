"""The encoders and the attention-fusion match head as ONNX graphs, cached on disk by weights.

Three graphs, each with a dynamic batch (and, for texts, a dynamic length):

* ``image.onnx``: pixels (N, 3, H, W) -> L2-normalised embedding (N, D) and patch tokens (N, T, W);
* ``text.onnx``: token ids trimmed to the longest text (N, L) -> final-layer tokens (N, L, W) and
  the L2-normalised embedding (N, D), read at the end-of-text token as ``RetrievalModel`` does;
* ``match.onnx``: the attention head's raw match logit (N,) from a :class:`models.fusion.Batch`.

The graphs are exported from the fp32 weights (``torch.onnx.export``, the TorchScript exporter,
opset :data:`OPSET`). They live in ``<cache>/<name>-<weights hash>/`` so a new set of weights
never runs an old graph, and a second start reuses the first one's export.
"""

from __future__ import annotations

import copy
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

from .fusion import Batch, FusionHeads
from .text_tower import causal_blocks, lean_blocks_apply, plain_text_tower
from .towers import visual_forward

log = logging.getLogger(__name__)

OPSET = 17
# bumped whenever the exported graphs change meaning, so old caches are not reused
EXPORT_VERSION = 1
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
    graph exported with one length fails on another; this one reshapes by -1 instead. Same
    weights, same arithmetic: the exported head matches the torch one to rounding."""

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


def _traceable(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose multi-head attention layers trace with dynamic lengths."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, TraceableAttention(child))
    return module


class MatchGraph(nn.Module):
    """The attention-fusion head's raw match logit for (image tokens, text tokens) pairs."""

    def __init__(self, heads: FusionHeads, kind: str) -> None:
        super().__init__()
        self.head = _traceable(heads.heads[kind])

    def forward(self, image_tokens: torch.Tensor, image_emb: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor, text_eot: torch.Tensor,
                text_emb: torch.Tensor) -> torch.Tensor:
        b = Batch(image_tokens, image_emb, text_tokens, text_mask, text_eot, text_emb)
        return self.head.score(b)  # type: ignore[operator,no-any-return]


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
            _export(MatchGraph(fusion, kind), args, paths["match"],
                    {"image_tokens": n, "image_emb": n, "text_tokens": nl, "text_mask": nl,
                     "text_eot": n, "text_emb": n}, {"logit": n})
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
