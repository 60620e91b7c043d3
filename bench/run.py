"""``fusion-search bench {encode,index,http,ingest,all} [--quick] [--out DIR]``."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

from .common import Options, resolve_out

BENCHMARKS = ("encode", "index", "http", "ingest")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion-search bench", description=__doc__)
    p.add_argument("what", choices=[*BENCHMARKS, "all"])
    p.add_argument("--quick", action="store_true", help="CI-sized run (all: under two minutes)")
    p.add_argument("--out", help="results folder (default $FUSION_BENCH_OUT or bench/results)")
    p.add_argument("--models", help="encode: comma-separated model names")
    p.add_argument("--sizes", help="index: comma-separated collection sizes")
    p.add_argument("--items", type=int, help="http: items in the served collection")
    p.add_argument("--duration", type=float, help="http: seconds per load level")
    p.add_argument("--images", type=int, help="ingest: number of generated JPEGs")
    return p


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks; each prints its tables and writes ``<name>.json``/``.png``."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    opts = Options(quick=args.quick, out=resolve_out(args.out))
    for what in BENCHMARKS if args.what == "all" else (args.what,):
        t0 = time.perf_counter()
        print(f"\n=== bench {what}{' (quick)' if opts.quick else ''} ===", flush=True)
        _run_one(what, opts, args)
        print(f"=== {what}: {time.perf_counter() - t0:.0f} s ===", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
