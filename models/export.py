"""The encoders and the attention-fusion match head as ONNX graphs, cached on disk by weights.

Three graphs, each with a dynamic batch (and, for texts, a dynamic length):

* ``image.onnx``: pixels (N, 3, H, W) -> L2-normalised embedding (N, D) and patch tokens (N, T, W);
* ``text.onnx``: token ids trimmed to the longest text (N, L) -> final-layer tokens (N, L, W) and
  the L2-normalised embedding (N, D), read at the end-of-text token as ``RetrievalModel`` does;
* ``match.onnx``: the attention head's raw match logit (N,) of N images (tokens, embeddings)
  against N texts or one text (``models.folded_match.FoldedMatch``, the arithmetic torch runs
  too).

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

from .folded_match import FoldedMatch
from .fusion import AttentionFusion, FusionHeads
from .text_tower import causal_blocks, lean_blocks_apply, plain_text_tower
from .towers import visual_forward

log = logging.getLogger(__name__)

OPSET = 17
# bumped whenever the exported graphs change meaning, so old caches are not reused
EXPORT_VERSION = 4
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
            head = fusion.heads[kind]
            if not isinstance(head, AttentionFusion):
                raise ExportError(f"only the attention head's match is exported, not {kind!r}")
            _export(FoldedMatch(head).float(), args, paths["match"],
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
