"""Bulk ingest: ``fusion-search ingest`` of generated 256x256 JPEGs, end to end, against the rate
at which the model alone encodes the same images already decoded.

The end-to-end figure is the wall time of the real command in a subprocess (start-up included:
imports, model load, opening the store); its fixed start-up is measured apart by running the same
command on an empty folder. Stage timings (read + decode, encode, store) on the same images show
where the time goes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .common import Options, plt_module, print_table, save_figure, write_json

FULL_IMAGES = 10_000
QUICK_IMAGES = 300
SIZE = 256
BATCH = 64  # the ingest command's default --batch
GOAL_RATIO = 0.6
STAGE_SAMPLE = 1_000  # images timed stage by stage
ENCODE_SAMPLE = 3_000  # images whose encoding alone is timed (best of two passes)


def write_jpegs(folder: Path, n: int) -> int:
    """``n`` generated scenes as JPEG files; returns their total bytes."""
    from models import synthetic

    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in tqdm(range(n), desc="writing JPEGs", leave=False):
        img = synthetic.example("test", i, size=SIZE).image
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        (folder / f"img_{i:05d}.jpg").write_bytes(buf.getvalue())
        total += buf.tell()
    return total


def ingest_command(folder: Path, data: Path, extra: Sequence[str] = ()) -> tuple[float, str]:
    """Wall seconds of ``fusion-search ingest folder --data data [extra...]`` and its JSON
    summary line."""
    cmd = [sys.executable, "-m", "app.cli", "ingest", str(folder), "--data", str(data), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ingest failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, proc.stdout.strip().splitlines()[-1]


def stages(folder: Path, n: int, work: Path) -> dict[str, Any]:
    """Seconds per image of each ingest stage, in this process, on the first ``n`` files."""
    from app.ingest import DRAFT_MARGIN
    from app.main import build_service
    from app.settings import Settings
    from index import Upload
    from models import decode_image

    files = sorted(folder.glob("*.jpg"))[:n]
    t0 = time.perf_counter()
    blobs = [f.read_bytes() for f in files]
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = [decode_image(b) for b in blobs]
    t_decode = time.perf_counter() - t0
    service = build_service(Settings(data_dir=work / "stages", demo=False))
    model = service.model
    h, w = model.image_size
    t0 = time.perf_counter()  # as ingest decodes: JPEGs reduced to >= DRAFT_MARGIN x the input
    for b in blobs:
        decode_image(b, reduce_to=(w * DRAFT_MARGIN, h * DRAFT_MARGIN))
    t_reduced = time.perf_counter() - t0
    model.encode_images_with_tokens([d.image for d in decoded[:BATCH]])  # warm
    t0 = time.perf_counter()
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    t_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb, tok = model.encode_images_with_tokens([d.image for d in decoded])
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        service.store.add_many([
            Upload(data=blobs[i], sha256=digests[i], ext="jpg", content_type="image/jpeg",
                   embedding=emb[i], tokens=tok[i], width=SIZE, height=SIZE)
            for i in range(s, min(s + BATCH, n))])
    t_store = time.perf_counter() - t0
    service.store.close()
    per = {"read": t_read, "decode": t_decode, "decode_reduced": t_reduced, "sha256": t_hash,
           "encode": t_encode, "store": t_store}
    return {"images": n, "seconds": per, "images_per_s": {k: n / v for k, v in per.items()}}


def pure_encode_rate(folder: Path, n: int) -> tuple[float, str]:
    """Images/s of ``encode_images_with_tokens`` (what ingest calls) on the first ``n`` images,
    decoded beforehand, batch by batch as ingest calls it: the faster of two passes."""
    from models import decode_image, load_model

    model = load_model(batch_size=BATCH)
    images = [decode_image(f.read_bytes()).image for f in sorted(folder.glob("*.jpg"))[:n]]
    model.encode_images_with_tokens(images[:BATCH])
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for s in range(0, len(images), BATCH):
            model.encode_images_with_tokens(images[s : s + BATCH])
        best = min(best, time.perf_counter() - t0)
    return len(images) / best, model.precision


def run(opts: Options, images: int | None = None) -> dict[str, Any]:
    n = images or (QUICK_IMAGES if opts.quick else FULL_IMAGES)
    work = Path(tempfile.mkdtemp(prefix="fusion-bench-ingest-"))
    try:
        folder = work / "images"
        jpeg_bytes = write_jpegs(folder, n)
        empty = work / "empty"
        empty.mkdir()
        # start-up (imports, model load, store open) before and after: the faster one counts
        startup_s, _ = ingest_command(empty, work / "data-empty")
        wall, summary = ingest_command(folder, work / "data")
        if not opts.quick:
            startup_s = min(startup_s, ingest_command(empty, work / "data-empty2")[0])
        encode_rate, precision = pure_encode_rate(folder, min(n, ENCODE_SAMPLE))
        stage = stages(folder, min(n, STAGE_SAMPLE), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    e2e = n / wall
    steady = n / (wall - startup_s) if wall > startup_s else float("nan")
    result = {
        "images": n, "size": SIZE, "jpeg_mean_bytes": jpeg_bytes / n, "batch": BATCH,
        "precision": precision, "command_summary": summary,
        "wall_s": wall, "startup_s": startup_s,
        "end_to_end_images_per_s": e2e, "steady_images_per_s": steady,
        "pure_encode_images_per_s": encode_rate, "pure_encode_images": min(n, ENCODE_SAMPLE),
        "ratio_end_to_end": e2e / encode_rate, "ratio_steady": steady / encode_rate,
        "goal_ratio": GOAL_RATIO, "stages": stage,
    }
    print_table(f"ingest: {n:,} JPEGs {SIZE}x{SIZE}", [result],
                ["images", "wall_s", "startup_s", "end_to_end_images_per_s",
                 "steady_images_per_s", "pure_encode_images_per_s", "ratio_end_to_end",
                 "ratio_steady"])
    print_table("ingest stages (one thread each, images/s)", [stage["images_per_s"]],
                list(stage["images_per_s"]))
    write_json(opts, "ingest", result)
    plot(opts, result)
    return result


def plot(opts: Options, result: dict[str, Any]) -> None:
    plt = plt_module()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    labels = ["pure encode", "ingest (steady)", "ingest (end to end)"]
    values = [result["pure_encode_images_per_s"], result["steady_images_per_s"],
              result["end_to_end_images_per_s"]]
    a1.barh(labels, values)
    a1.axvline(result["pure_encode_images_per_s"] * GOAL_RATIO, color="green", ls=":",
               label=f"goal {GOAL_RATIO:.0%} of encode")
    a1.set_xlabel("images/s")
    a1.legend(fontsize=7)
    a1.set_title(f"ingest of {result['images']:,} JPEGs")
    per = result["stages"]["seconds"]
    n = result["stages"]["images"]
    a2.barh(list(per), [v / n * 1000 for v in per.values()])
    a2.set_xlabel("ms per image (one thread)")
    a2.set_title("where ingest time goes")
    save_figure(opts, fig, "ingest")
