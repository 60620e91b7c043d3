"""How the benchmarks page writes a figure: markdown tables, number cells, ratios, sizes,
paths as a reader types them, and the figures' image links."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOT_MEASURED = "not measured"
MET = "goal met"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cell(v: object) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {val}" for k, val in v.items() if val is not None) or "–"
    return "–" if v is None else str(v).replace("|", "\\|")


def times(v: float) -> str:
    return f"{v:.2f}×"


def pct(v: float) -> str:
    return f"{v:+.0%}"


def mib(v: float) -> str:
    return f"{v / 2**20:,.0f} MiB"


def bench_command(d: dict[str, Any]) -> str:
    return d.get("run", {}).get("command") or f"fusion-search bench {d['benchmark']}"


def repo_path(path: Path) -> str:
    """A path as a reader of the page types it: from the repository root when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def setting(factory: str, params: dict[str, Any]) -> str:
    return f"`{factory}`" + (f" ({cell(params)})" if params else "")


def point(p: dict[str, Any]) -> str:
    """A measured setting: its name and, when it has one, its efSearch / nprobe."""
    return p["name"] + (f" at {p['param']}" if p.get("param") is not None else "")


def figure(name: str, folder: Path, doc: Path, alt: str) -> str:
    png = folder / f"{name}.png"
    if not png.is_file():
        return f"*(plot {png.name}: {NOT_MEASURED})*"
    return f"![{alt}]({os.path.relpath(png, doc.parent)})"

