"""Catalog write rate: the SQLite catalog (WAL, ``synchronous=FULL``) against the PostgreSQL one
(a throwaway cluster with its default ``fsync=on``, or ``--database-url``), both durable on
commit, on the same disk.

Each scenario inserts rows of a ViT-B-32-sized item (a 512-d float32 embedding, 50x768 float16
patch tokens: 77 KB) through the catalog's own ``add_many``: one row per transaction (single
uploads) or 64 (an ingest batch), from one writer thread or four (each with its own catalog,
as separate processes would have). Reports rows/s and the p50/p99 transaction time.

The figures depend on the disk's flush latency and on what else the machine runs; the load
averages in the result's machine line say how busy it was (on the project's shared 2-core
machine, heavily: treat them as relative).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Options, latency_stats, print_table, resolve_out, write_json
from bench.pg_cluster import PgCluster, find_bin_dir
from index.catalog_factory import CatalogBackend, open_catalog
from index.catalog_schema import NewItem

DIM = 512
TOKENS = (50, 768)
BATCHES = (1, 64)
WRITERS = (1, 4)


def _rows(start: int, n: int) -> list[NewItem]:
    rng = np.random.default_rng(start)
    tokens = rng.standard_normal(TOKENS).astype(np.float16)
    return [
        NewItem(sha256=f"{start + k:064x}", file=f"ab/cd/{start + k:064x}.png",
                content_type="image/png", embedding=rng.standard_normal(DIM).astype(np.float32),
                tokens=tokens, caption=f"a small red circle number {start + k}",
                tags=("bench",), original_name=f"img_{start + k}.png", width=64, height=64,
                bytes=4096)
        for k in range(n)
    ]


def _scenario(open_one: Callable[[], CatalogBackend], batch: int, writers: int,
              rows_per_writer: int, offset: int) -> dict[str, Any]:
    catalogs = [open_one() for _ in range(writers)]
    durations: list[list[float]] = [[] for _ in range(writers)]
    batches = [[_rows(offset + w * rows_per_writer + i, batch)
                for i in range(0, rows_per_writer, batch)] for w in range(writers)]

    def write(w: int) -> None:
        for rows in batches[w]:
            t0 = time.perf_counter()
            catalogs[w].add_many(rows)
            durations[w].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for cat in catalogs:
        cat.close()
    written = sum(len(b) for per in batches for b in per)
    stats = latency_stats([d for per in durations for d in per])
    return {"batch": batch, "writers": writers, "rows": written,
            "rows_per_s": round(written / wall, 1), "tx_p50_ms": stats["p50_ms"],
            "tx_p99_ms": stats["p99_ms"], "transactions": stats["n"]}


def _run_backend(name: str, target: str | Path, rows: int) -> list[dict[str, Any]]:
    first = open_catalog(target)
    first.check_model("bench", DIM)
    first.close()
    out = []
    offset = 0
    for batch in BATCHES:
        for writers in WRITERS:
            n = max(batch, rows // writers // batch * batch)
            result = _scenario(lambda: open_catalog(target), batch, writers, n, offset)
            offset += n * writers + 1
            out.append({"backend": name, **result})
            print(f"{name}: batch {batch}, {writers} writers: {result['rows_per_s']} rows/s")
    return out


@contextmanager
def _postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb, pg_ctl): `make postgres`, "
                         "or pass --database-url")
    cluster = PgCluster(bin_dir, durable=True)
    try:
        cluster.start()
        yield cluster.create_database()
    finally:
        cluster.destroy()


def run(opts: Options, rows: int | None = None, database_url: str | None = None) -> dict[str, Any]:
    """Every scenario on both backends; prints them and writes ``catalog-writes.json``."""
    rows = rows or (128 if opts.quick else 1024)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        results += _run_backend("sqlite", Path(tmp) / "catalog.sqlite3", rows)
        with _postgres(database_url) as url:
            results += _run_backend("postgres", url, rows)
    print_table("catalog writes (rows/s; one transaction = one add_many)", results,
                ["backend", "batch", "writers", "rows", "rows_per_s", "tx_p50_ms", "tx_p99_ms"])
    data = {"row": {"dim": DIM, "tokens": list(TOKENS)}, "rows_per_scenario": rows,
            "postgres": "given URL" if database_url else "throwaway cluster, fsync=on",
            "sqlite": "WAL, synchronous=FULL", "scenarios": results}
    write_json(opts, "catalog-writes", data)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.catalog_writes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    p.add_argument("--rows", type=int, help="rows per scenario (default 1024, quick 128)")
    p.add_argument("--database-url", help="an existing, empty PostgreSQL database to write to")
    args = p.parse_args(argv)
    command = "python -m bench.catalog_writes " + " ".join(
        argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    opts = Options(quick=args.quick, out=resolve_out(args.out, args.quick), command=command)
    run(opts, rows=args.rows, database_url=args.database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
