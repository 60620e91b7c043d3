"""docs/benchmarks.md from the result JSON files: ``fusion-search bench report`` (or
``python -m bench.report [DIR] [--doc FILE]``).

Every figure in the page is read from ``<DIR>/{encode,index,http,ingest}.json``; what those files
do not hold is written as "not measured", never estimated. Each goal of the benchmark issue gets
one line: "goal met", or how far the measured figure is from it.

This module loads the files and writes the page (header, reproduce, machine line); the cells are
formatted in ``report_cells``, looked up in ``report_lookups``, the goals judged in
``report_goals`` and the per-benchmark sections written in ``report_sections``; the Scale-out
section and its goal lines (replicas, Ray ingest, catalog writes) in ``report_scaling``. Their
public names stay importable from here.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .common import QUICK_DIR, RESULTS_DIR
from .gpu import gpu_goals
from .report_cells import MET, NOT_MEASURED, ROOT, bench_command, figure, repo_path, table
from .report_goals import (
    HTTP_GOAL_ITEMS,
    INDEX_GOAL_N,
    INGEST_GOAL_IMAGES,
    MEMORY_SIZES,
    Goal,
    encode_goals,
    goals,
    http_goals,
    index_goals,
    ingest_goals,
    memory_goals,
)
from .report_lookups import Results, at_recall, client_comparison, hnsw_pair, micro_batching
from .report_runtimes import runtimes_goals
from .report_scaling import FILES as SCALING_FILES
from .report_scaling import REPRODUCE as SCALING_REPRODUCE
from .report_scaling import TITLE as SCALING_TITLE
from .report_scaling import scaling, scaling_goals
from .report_sections import SECTIONS, encode, http, index, ingest, memory
from .report_tried import TRIED

__all__ = [
    "DOC", "HTTP_GOAL_ITEMS", "INDEX_GOAL_N", "INGEST_GOAL_IMAGES", "MEMORY_SIZES", "MET", "NAMES",
    "NOT_MEASURED", "ROOT", "SECTIONS", "TRIED", "Goal", "Results", "at_recall",
    "client_comparison", "default_doc", "encode", "encode_goals", "goals", "hnsw_pair", "http",
    "http_goals", "index", "index_goals", "ingest", "ingest_goals", "load", "main", "memory",
    "memory_goals", "micro_batching", "render", "table", "write",
]

DOC = ROOT / "docs" / "benchmarks.md"
NAMES = ("encode", "index", "http", "ingest", "memory", "runtimes", *SCALING_FILES, "gpu")


def default_doc(out: Path) -> Path:
    """docs/benchmarks.md for the recorded results; a page beside any other results."""
    return DOC if out.resolve() == RESULTS_DIR.resolve() else out / "benchmarks.md"


def load(folder: Path) -> Results:
    return {name: json.loads((folder / f"{name}.json").read_text())
            for name in NAMES if (folder / f"{name}.json").is_file()}


def write(folder: Path, doc: Path) -> Path:
    """Render the results in ``folder`` into ``doc``; returns its path."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(load(folder), folder, doc))
    print(f"wrote {doc}")
    return doc


def _machine_table(res: Results) -> str:
    rows = []
    for name, d in res.items():
        m, r = d["machine"], d.get("run", {})
        steal = r.get("steal_pct")
        rows.append([name, "quick" if d["quick"] else "full", r.get("wall_s"), r.get("cpu_s"),
                     "–" if steal is None else f"{steal:.1f}",
                     m["date_utc"], " / ".join(str(x) for x in m.get("loadavg_1_5_15", [])),
                     m.get("matmul_gflops", "–")])
    out = table(rows, ["benchmark", "run", "wall s", "CPU s", "CPU steal %", "written (UTC)",
                       "load average 1/5/15 min when written",
                       "fp32 matmul GFLOP/s when written"])
    out += "\n\n" + _run_span(res)
    rates = {n: d["machine"]["matmul_gflops"] for n, d in res.items()
             if d["machine"].get("matmul_gflops")}
    encode = (res.get("encode") or {}).get("matmul_gflops", {}).get("fp32")
    if encode:  # the encode benchmark times the same matmul at its own start
        rates.setdefault("encode", encode)
    if rates and max(rates.values()) > 1.25 * min(rates.values()):
        slow, fast = min(rates, key=rates.__getitem__), max(rates, key=rates.__getitem__)
        out += (f"\n\nThe CPU did not run at one speed for all files: fp32 matmul "
                f"{rates[slow]:.0f} GFLOP/s when {slow} was written against {rates[fast]:.0f} for "
                f"{fast} (a virtual machine shares its host). Absolute timings compare across "
                "files only through that; every ratio on this page is within one file.")
    return out


RUN_GAP_S = 15 * 60  # a longer pause between one file and the next starts another run


def _run_span(res: Results) -> str:
    """Whether the files come from one run: each started (written minus its wall time) within
    ``RUN_GAP_S`` of the one before it ending; else the separate runs, each with its files."""
    spans = []
    for name, d in res.items():
        end = datetime.strptime(d["machine"]["date_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc)
        spans.append((end - timedelta(seconds=float(d.get("run", {}).get("wall_s") or 0)), end,
                      name))
    spans.sort()
    runs: list[list[tuple[datetime, datetime, str]]] = []
    for span in spans:
        if runs and span[0] <= max(e for _, e, _ in runs[-1]) + timedelta(seconds=RUN_GAP_S):
            runs[-1].append(span)
        else:
            runs.append([span])

    def when(run: list[tuple[datetime, datetime, str]]) -> str:
        start, end = run[0][0], max(e for _, e, _ in run)
        return (f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC "
                f"({(end - start).total_seconds() / 3600:.1f} h)")

    if len(runs) == 1:
        return f"All {len(spans)} files come from one run, {when(runs[0])}, one after another."
    return (f"These files come from {len(runs)} runs (a gap of over {RUN_GAP_S // 60} minutes "
            "between one file and the next starts another): " + "; ".join(
                f"{when(r)}: {', '.join(n for _, _, n in r)}" for r in runs) + ".")


def _machine(res: Results) -> str:
    facts = {name: d["machine"] for name, d in res.items()}
    keys = ("cpu", "cpu_flags", "cores", "ram_gib", "native_bf16", "torch", "torch_threads",
            "open_clip", "faiss", "numpy", "python")
    key = {name: json.dumps([m.get(k) for k in keys]) for name, m in facts.items()}
    counts = Counter(key.values())
    common = max(counts, key=counts.__getitem__)  # the machine most files were written on
    m = next(facts[name] for name in facts if key[name] == common)
    flags = m.get("cpu_flags")
    flag_text = (f"flags {', '.join(flags) if flags else 'none'} (of those checked: avx2, "
                 "avx512f, avx512_vnni, avx512_bf16, amx_bf16)" if flags is not None
                 else "flags not recorded")
    gpu = (m["gpu"] or "none") if "gpu" in m else "not recorded"
    line = (f"CPU **{m['cpu']}** (from {m.get('cpu_source', '/proc/cpuinfo')}), {flag_text}, "
            f"{m['cores']} cores, {m['ram_gib']} GiB "
            f"RAM, native bf16: {m['native_bf16']}, GPU: {gpu}; "
            f"torch {m['torch']} "
            f"({m['torch_threads']} threads), open_clip {m['open_clip']}, FAISS {m['faiss']}, "
            f"NumPy {m['numpy']}, Python {m['python']}.")
    if len(counts) > 1:
        line += " Not written on this machine: " + "; ".join(
            f"{n}: {f['cpu']} ({', '.join(f.get('cpu_flags') or []) or 'flags not recorded'}), "
            f"{f['cores']} cores, torch {f['torch']}" for n, f in facts.items() if key[n] != common)
    return line


def render(res: Results, folder: Path, doc: Path) -> str:
    rel = repo_path(folder)
    quick = [n for n, d in res.items() if d["quick"]]
    out = ["# Benchmarks", "",
           f"Generated by `fusion-search bench report` from `{rel}/*.json`; edit the code in "
           "`bench/`, not this page. Every figure below is read from those files, each "
           "comparison is between figures of the same run, and what they do not hold reads "
           f"\"{NOT_MEASURED}\".", ""]
    if quick:
        out += [f"> **Quick (CI-sized) results** for {', '.join(quick)}: small sizes and short "
                "runs that only show the benchmarks work. They are not the recorded figures.",
                ""]
    out += ["## Reproduce", "",
            "On a quiet machine (nothing else using the CPU), from the repository root with the "
            "`bench` extra installed (`pip install -e '.[bench]'`):", "", "```sh",
            "fusion-search bench all          # the recorded run (about 2 hours on 2 "
            "cores, most of it memory's two 1,000,000-item collections): "
            "bench/results/*.json + *.png, then this page",
            "fusion-search bench report       # only rewrite this page from bench/results/",
            "fusion-search bench all --quick  # CI-sized smoke run (under two minutes), "
            f"results and page in {repo_path(QUICK_DIR)}/",
            "# the scale-out figures, not part of `all` (several servers, a Ray cluster, a "
            "PostgreSQL cluster); then `fusion-search bench report`",
            *SCALING_REPRODUCE,
            "# on a machine with a GPU: it against the same machine's CPU (gpu.json)",
            "python -m bench.gpu",
            "```", ""]
    if res:
        out += ["The commands that wrote the files this page reads:", "", "```sh",
                *(bench_command(d) for d in res.values()), "```", ""]
    out += ["## Machine", ""]
    if res:
        out += [_machine(res), "", _machine_table(res), "",
                "A load average above the core count while a benchmark ran means other work "
                "shared the machine; CPU steal is the share of this virtual machine's CPU time "
                "its host gave to other guests while the benchmark ran (from /proc/stat; \"–\" "
                "where a file predates that reading). Either way its figures are then lower "
                "than this machine can do.", "",
                "The flags are those of avx2, avx512f, avx512_vnni, avx512_bf16 and amx_bf16 "
                "the CPU has (`models.precision.cpu_info`, the same reading `/api/v1/info` "
                "reports): `FUSION_PRECISION=auto` runs the encoders in bf16 only with "
                "avx512_bf16 or amx_bf16, in fp32 otherwise. These benchmarks run the model on "
                "the CPU; the service chooses its device with `FUSION_DEVICE` (auto, cpu, cuda, "
                "cuda:N; auto takes a GPU where torch sees one), and GPU names one where the "
                "machine had it.", ""]
    else:
        out += [f"{NOT_MEASURED}: no result files in `{rel}/`.", ""]
    judged = [*goals(res), *runtimes_goals(res.get("runtimes")), *scaling_goals(res),
              *gpu_goals(res.get("gpu"))]
    out += ["## Goals", "",
            table([[g.area, g.goal, g.measured, g.verdict] for g in judged],
                  ["area", "goal", "measured (same run)", "verdict"]), ""]
    missed = sorted({g.area.split(",")[0] for g in judged if g.verdict.startswith("not met")})
    if missed:
        out += ["What was tried toward the goals not met (the figures are in the sections "
                "below):", "", *(f"- **{a}**: {TRIED[a]}" for a in missed if a in TRIED), ""]
    for name, (title, render_one, alt) in SECTIONS.items():
        out += [f"## {title}", ""]
        d = res.get(name)
        if d is None:
            out += [f"{NOT_MEASURED}: `{rel}/{name}.json` is missing (`fusion-search bench "
                    f"{name}` writes it).", ""]
            continue
        out += ["```sh", bench_command(d), "```", "", figure(name, folder, doc, alt), "",
                render_one(d), ""]
    out += [f"## {SCALING_TITLE}", "", scaling(res, rel), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    p.add_argument("results", nargs="?", default=str(RESULTS_DIR),
                   help="folder of result JSON files (default bench/results)")
    p.add_argument("--doc", help="page to write (default docs/benchmarks.md for bench/results, "
                                 "<results>/benchmarks.md otherwise)")
    args = p.parse_args(argv)
    folder = Path(args.results)
    write(folder, Path(args.doc) if args.doc else default_doc(folder))
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
