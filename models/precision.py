"""Which precision the encoders run in: the setting, the CPU's bf16 support, and a timed choice
for the text tower (narrow models run short queries faster in float32)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .text_tower import causal_blocks, lean_blocks_apply, plain_text_tower


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
