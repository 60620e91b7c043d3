"""Bulk ingest single-process against Ray on the same machine: ``fusion-search ingest`` and
``fusion-search ingest --ray auto`` on the same generated 256x256 JPEGs, each in a subprocess
from start to exit (the Ray run starts its own local cluster, as a user's would).

Start-up (imports, model load, store open; for Ray also the cluster and its workers) is
measured apart on an empty folder, so the steady rate is reported beside the end-to-end one.
The load average is recorded with the result: on a shared machine both rates are lower than the
machine can do, and Ray's many processes suffer more from it.

    python -m bench.ingest_ray [--images N] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import Options, print_table, resolve_out, write_json
from .ingest import ingest_command, write_jpegs

FULL_IMAGES = 2_000
QUICK_IMAGES = 200


def run(opts: Options, images: int | None = None) -> dict[str, Any]:
    n = images or (QUICK_IMAGES if opts.quick else FULL_IMAGES)
    work = Path(tempfile.mkdtemp(prefix="fusion-bench-ingest-ray-"))
    rows: list[dict[str, Any]] = []
    try:
        folder, empty = work / "images", work / "empty"
        write_jpegs(folder, n)
        empty.mkdir()
        for mode, extra in (("single process", []), ("ray (local cluster)", ["--ray", "auto"])):
            startup, _ = ingest_command(empty, work / f"empty-{len(rows)}", extra)
            wall, summary = ingest_command(folder, work / f"data-{len(rows)}", extra)
            rerun, again = ingest_command(folder, work / f"data-{len(rows)}", extra)
            rows.append({
                "mode": mode, "images": n, "wall_s": wall, "startup_s": startup,
                "images_per_s": n / wall,
                "steady_images_per_s": n / (wall - startup) if wall > startup else None,
                "rerun_s": rerun, "summary": summary, "rerun_summary": again,
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"images": n, "size": 256, "cores": os.cpu_count(), "runs": rows,
              "ray_over_single": rows[1]["images_per_s"] / rows[0]["images_per_s"],
              "contended": os.getloadavg()[0] > (os.cpu_count() or 1)}
    print_table(f"ingest, {n:,} JPEGs, single process against Ray on {os.cpu_count()} cores",
                rows, ["mode", "images", "wall_s", "startup_s", "images_per_s",
                       "steady_images_per_s", "rerun_s"])
    write_json(opts, "ingest_ray", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest_ray", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, help=f"generated JPEGs (default {FULL_IMAGES:,}, "
                                               f"{QUICK_IMAGES} with --quick)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", help="results folder (default bench/results, quick: .../quick)")
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.ingest_ray", *(argv or sys.argv[1:])])
    run(Options(quick=args.quick, out=resolve_out(args.out, args.quick), command=command),
        images=args.images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
