"""Which precision the encoders run in: the setting, the CPU (model name and flags, read from
/proc/cpuinfo), and a timed choice for the text tower (narrow models run short queries faster
in float32)."""

from __future__ import annotations

import functools
import math
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .text_tower import causal_blocks, lean_blocks_apply, plain_text_tower

# The flags that decide how fast this CPU runs the encoders: AVX2 / AVX-512 for fp32, VNNI for
# int8, AVX-512 BF16 and AMX-BF16 for native bf16 matmuls (without them torch emulates bf16,
# slower than fp32).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has, and where that was read."""

    model: str
    flags: tuple[str, ...]
    source: str

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "flags": list(self.flags), "source": self.source,
                "native_bf16": self.native_bf16}


def parse_cpuinfo(text: str, source: str = str(CPUINFO)) -> CpuInfo:
    """The model name and the flags that matter from a /proc/cpuinfo text (first processor).

    x86 writes ``model name`` and ``flags``; Arm writes ``Features`` and, on some kernels,
    ``Model`` or ``Hardware`` instead of a model name.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    names = (fields[k] for k in ("model name", "model", "hardware", "cpu model")
             if fields.get(k) and not fields[k].isdigit())  # x86's "model" is a number
    model = next(names, "") or platform.processor() or "unknown"
    present = set((fields.get("flags") or fields.get("features") or "").split())
    return CpuInfo(model, tuple(f for f in CPU_FLAGS if f in present), source)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo`: /proc/cpuinfo where it exists, else the platform module's
    processor name with no flags known (then ``auto`` precision stays in fp32)."""
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        return CpuInfo(platform.processor() or platform.machine() or "unknown", (), "platform")


def native_bf16(cpu: CpuInfo | None = None) -> bool:
    """True when the CPU runs bf16 matmuls natively (AVX-512 BF16 or AMX-BF16)."""
    return (cpu or cpu_info()).native_bf16


def choose_precision(precision: str, device: str, cpu: CpuInfo | None = None
                     ) -> tuple[torch.dtype, str]:
    """The encoders' dtype for the precision setting (auto | fp32 | bf16), and why.

    ``auto`` on a CPU follows its flags: bf16 with AVX-512 BF16 or AMX-BF16, fp32 otherwise.
    """
    if precision == "fp32":
        return torch.float32, "fp32 as set"
    if precision == "bf16":
        return torch.bfloat16, "bf16 as set"
    if precision != "auto":
        raise ModelLoadError(f"unknown precision {precision!r}; use auto, fp32 or bf16")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, f"auto: the GPU ({device}) supports bf16"
        return torch.float32, f"auto: the GPU ({device}) lacks bf16"
    cpu = cpu or cpu_info()
    has = [f for f in BF16_FLAGS if f in cpu.flags]
    if has:
        return torch.bfloat16, (f"auto: the CPU ({cpu.model}) has {' and '.join(has)}, "
                                "native bf16 matmuls")
    return torch.float32, (f"auto: the CPU ({cpu.model}) has neither avx512_bf16 nor amx_bf16; "
                           "bf16 would be emulated, slower than fp32")


def precision_name(dtype: torch.dtype) -> str:
    """``bf16`` or ``fp32``: how /api/v1/info and the runtimes name a torch dtype."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def resolve_dtype(precision: str, device: str, cpu: CpuInfo | None = None) -> torch.dtype:
    """Map the precision setting (auto | fp32 | bf16) to a torch dtype for the encoders."""
    return choose_precision(precision, device, cpu)[0]


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
