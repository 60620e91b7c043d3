"""``fusion-search bench {encode,index,http,ingest,memory,all,report} [--quick] [--out DIR]``.

``all`` runs the five benchmarks and then writes the report (docs/benchmarks.md for the recorded
results in bench/results; ``<out>/benchmarks.md`` for any other folder, quick runs included).
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .common import Options

BENCHMARKS = ("encode", "index", "http", "ingest", "memory", "runtimes")
# run by name only, not by ``all``: several server processes, minutes of model loads
EXTRA = ("replicas",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench options, shared by ``python -m bench.run`` and ``fusion-search bench``."""
    p.add_argument("what", choices=[*BENCHMARKS, *EXTRA, "all", "report"])
    p.add_argument("--quick", action="store_true",
                   help="CI-sized run (all: under two minutes); results go to bench/results/quick")
    p.add_argument("--out", help="results folder (default $FUSION_BENCH_OUT, else bench/results, "
                                 "or bench/results/quick with --quick)")
    p.add_argument("--doc", help="report: the Markdown file to write (default docs/benchmarks.md "
                                 "for bench/results, <out>/benchmarks.md otherwise)")
    p.add_argument("--models", help="encode, runtimes: comma-separated model names")
    p.add_argument("--sizes", help="index: comma-separated collection sizes")
    p.add_argument("--items", type=int,
                   help="http, replicas: items in the served collection")
    p.add_argument("--duration", type=float,
                   help="http: seconds per load level; replicas: per worker count")
    p.add_argument("--images", type=int, help="ingest: number of generated JPEGs")
    p.add_argument("--memory-items", help="memory: comma-separated collection sizes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion-search bench", description=__doc__)
    add_arguments(p)
    return p


def command_line(args: argparse.Namespace, what: str) -> str:
    """The command that reproduces one benchmark of this run (``all`` names each one)."""
    parts = ["fusion-search", "bench", what]
    if args.quick:
        parts.append("--quick")
    if args.out:
        parts += ["--out", args.out]
    options = {"encode": ("models",), "index": ("sizes",), "http": ("items", "duration"),
               "ingest": ("images",), "memory": ("memory_items",),
               "runtimes": ("models",), "replicas": ("items", "duration")}[what]
    for name in options:
        value = getattr(args, name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def _run_one(what: str, opts: Options, args: argparse.Namespace) -> None:
    if what == "encode":
        from . import encode

        models = args.models.split(",") if args.models else encode.MODELS
        encode.run(opts, models=models)
    elif what == "index":
        from . import index_search

        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
        index_search.run(opts, sizes=sizes)
    elif what == "http":
        from . import http_load

        http_load.run(opts, items=args.items, duration=args.duration)
    elif what == "ingest":
        from . import ingest

        ingest.run(opts, images=args.images)
    elif what == "memory":
        from . import memory

        sizes = [int(s) for s in args.memory_items.split(",")] if args.memory_items else None
        memory.run(opts, items=sizes)
    elif what == "runtimes":
        from . import runtimes

        runtimes.run(opts, models=args.models.split(",") if args.models else runtimes.MODELS)
    elif what == "replicas":
        from . import replicas

        replicas.run(opts, items=args.items, duration=args.duration)


def run(args: argparse.Namespace) -> int:
    """Run what ``args`` names; each benchmark prints its tables and writes JSON and PNG."""
    from . import report
    from .common import Options, resolve_out

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = resolve_out(args.out, args.quick)
    doc = Path(args.doc) if args.doc else report.default_doc(out)
    if args.what == "report":
        report.write(out, doc)
        return 0
    t_all = time.perf_counter()
    for what in BENCHMARKS if args.what == "all" else (args.what,):
        t0 = time.perf_counter()
        print(f"\n=== bench {what}{' (quick)' if args.quick else ''} ===", flush=True)
        _run_one(what, Options(quick=args.quick, out=out, command=command_line(args, what)), args)
        print(f"=== {what}: {time.perf_counter() - t0:.0f} s ===", flush=True)
    if args.what == "all":
        report.write(out, doc)
        print(f"=== all: {time.perf_counter() - t_all:.0f} s ===", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
