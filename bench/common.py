"""What every benchmark shares: the output folder, machine facts, timing and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# quick (CI-sized) runs land apart, so they never overwrite the recorded full results
QUICK_DIR = RESULTS_DIR / "quick"
OUT_ENV = "FUSION_BENCH_OUT"


@dataclass(frozen=True)
class Options:
    """How a benchmark runs: the quick (CI-sized) variant or the full one, and where to write.

    ``command`` is the command line that produced the results (recorded in each JSON file);
    ``started`` the ``time.perf_counter()`` and ``cpu_started`` the ``cpu_seconds(children=True)``
    when this benchmark began, so each file records its own wall and CPU time; ``steal_started``
    the machine's (steal, total) CPU ticks then, for the share of CPU time the hypervisor gave
    to other guests while it ran.
    """

    quick: bool
    out: Path
    command: str = ""
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=lambda: cpu_seconds(children=True))
    steal_started: tuple[int, int] | None = field(default_factory=lambda: steal_ticks())

    def path(self, name: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out / name


def resolve_out(arg: str | None, quick: bool = False) -> Path:
    """``--out`` if given, else ``$FUSION_BENCH_OUT``, else ``bench/results`` for a full run and
    ``bench/results/quick`` for a quick one."""
    if arg:
        return Path(arg)
    env = os.environ.get(OUT_ENV)
    if env:
        return Path(env)
    return QUICK_DIR if quick else RESULTS_DIR


def steal_ticks() -> tuple[int, int] | None:
    """(steal, total) ticks of all CPUs from /proc/stat; None where there is no such file."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user, nice]
    return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None


def steal_percent(started: tuple[int, int] | None) -> float | None:
    """Percent of all CPU time stolen by the hypervisor since ``started`` (``steal_ticks``)."""
    now = steal_ticks()
    if started is None or now is None or now[1] <= started[1]:
        return None
    return round(100 * (now[0] - started[0]) / (now[1] - started[1]), 1)


def _ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures: CPU, cores, RAM, library versions."""
    import faiss
    import open_clip
    import torch

    from models.precision import cpu_info

    cpu = cpu_info()
    return {
        "cpu": cpu.model,
        # which of avx2, avx512f, avx512_vnni, avx512_bf16, amx_bf16 the CPU has: what the
        # figures depend on, and what `auto` precision reads (models.precision)
        "cpu_flags": list(cpu.flags),
        "cpu_source": cpu.source,
        "cores": os.cpu_count(),
        "ram_gib": round(_ram_bytes() / 2**30, 1),
        "native_bf16": cpu.native_bf16,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "open_clip": open_clip.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # load averages when the result was written: above the benchmark's own use, other work
        # shared the machine
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        # this CPU's speed when the result was written: the same virtual machine ran an fp32
        # matmul at 178 GFLOP/s one morning and at 85 that afternoon, so absolute timings from
        # files written at different times compare only through this
        "matmul_gflops": round(matmul_gflops(), 1),
    }


def matmul_gflops(dtype: Any = None, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n^3 matmul in ``dtype`` (default fp32) on this machine now."""
    import torch

    a = torch.randn(n, n).to(dtype or torch.float32)
    b = torch.randn(n, n).to(dtype or torch.float32)
    best = min(time_calls(lambda: a @ b, repeats, warmup=1))
    return 2 * n**3 / best / 1e9


def write_json(opts: Options, name: str, data: dict[str, Any]) -> Path:
    """Write ``<out>/<name>.json`` with the machine facts, the mode, the command and the wall
    and CPU seconds the benchmark took so far (this process and its finished children)."""
    path = opts.path(f"{name}.json")
    run = {"command": opts.command,
           "wall_s": round(time.perf_counter() - opts.started, 1),
           "cpu_s": round(cpu_seconds(children=True) - opts.cpu_started, 1),
           "steal_pct": steal_percent(opts.steal_started)}
    payload = {"benchmark": name, "quick": opts.quick, "run": run, "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"wrote {path}")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds of per-call durations in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"),
                "mean_ms": float("nan"), "n": 0}
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "n": int(ms.size),
    }


def time_calls(fn: Callable[[], object], n: int, warmup: int = 1) -> list[float]:
    """Durations in seconds of ``n`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def best_rate(fn: Callable[[], object], items: int, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` timed calls (the least disturbed one)."""
    return items / min(time_calls(fn, repeats, warmup=0))


def print_table(title: str, rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> None:
    """A plain fixed-width table on stdout."""
    print(f"\n## {title}")
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return "-" if value is None else str(value)


def plt_module() -> Any:
    """matplotlib.pyplot with a file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(opts: Options, fig: Any, name: str) -> Path:
    path = opts.path(f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt_module().close(fig)
    print(f"wrote {path}")
    return path


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process so far (plus its waited-for children)."""
    t = os.times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)
