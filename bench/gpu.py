"""A GPU against the CPU of the same machine, in one process: images/s of the image encoder's
forward and the latency of one short text query, for fusion-tiny and ViT-B-32, on the same
weights and inputs, with the cosine of the GPU's embeddings to the CPU's.

This is the script to run when a machine with a GPU is lent for a few minutes (the service
reaches it through ``FUSION_DEVICE=auto|cuda[:N]``; nothing else needs one):

    python -m bench.gpu                  # cuda against cpu; writes bench/results/gpu.json
    python -m bench.gpu --quick          # a few seconds: small batches, fusion-tiny only
    python -m bench.gpu --device cpu --quick   # the same path on a machine without a GPU (CI)

Without the GPU it was asked for it says so and exits with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .common import Options, print_table, resolve_out, time_calls, write_json
from .encode import min_cosine
from .report_goals import NOT_MEASURED, Goal

MODELS = ("fusion-tiny", "ViT-B-32")
QUICK_MODELS = ("fusion-tiny",)
BATCH = {"fusion-tiny": 256, "ViT-B-32": 64}
QUICK_BATCH = 8
QUERY = "a red circle"
SCRIPT = "python -m bench.gpu"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], device: str, reps: int) -> list[float]:
    """``time_calls`` of ``fn`` with the device's queue drained inside each timed call."""
    def call() -> None:
        fn()
        _sync(device)

    return time_calls(call, reps, warmup=1)


def measure(name: str, device: str, batch: int, reps: int) -> dict[str, Any]:
    """One model on one device: images/s (best of ``reps`` batches), one query p50, and the
    embeddings (for the cosine against another device)."""
    import torch

    from models import load_model, synthetic

    model = load_model(name, device=device, precision="auto")
    pixels = model.preprocess([synthetic.example("test", i).image for i in range(batch)])
    with torch.inference_mode():
        images = _seconds(lambda: model._images_forward(pixels), device, reps)
        emb = model._images_forward(pixels)[0].float().cpu().numpy()
    query = _seconds(lambda: model.encode_texts([QUERY]), device, reps * 5)
    info = model.info()
    return {"model": name, "device": device, "precision": info["precision"], "batch": batch,
            "images_per_s": batch / min(images), "query_p50_ms": 1000 * statistics.median(query),
            "_images": emb, "_text": model.encode_texts([QUERY])}


def run(opts: Options, device: str, models: Sequence[str] | None = None) -> dict[str, Any]:
    names = list(models or (QUICK_MODELS if opts.quick else MODELS))
    reps = 3 if opts.quick else 10
    rows = []
    for name in names:
        batch = QUICK_BATCH if opts.quick else BATCH.get(name, 64)
        cpu = measure(name, "cpu", batch, reps)
        dev = measure(name, device, batch, reps)
        for r in (cpu, dev):
            rows.append({k: v for k, v in r.items() if not k.startswith("_")})
        rows[-1].update(images_x_cpu=dev["images_per_s"] / cpu["images_per_s"],
                        query_x_cpu=cpu["query_p50_ms"] / dev["query_p50_ms"],
                        image_cosine=min_cosine(dev["_images"], cpu["_images"]),
                        text_cosine=min_cosine(dev["_text"], cpu["_text"]))
    print_table(f"{device} against cpu", rows,
                ["model", "device", "precision", "batch", "images_per_s", "query_p50_ms",
                 "images_x_cpu", "query_x_cpu", "image_cosine", "text_cosine"])
    result = {"device": device, "query": QUERY, "rows": rows}
    write_json(opts, "gpu", result)
    return result


def gpu_goals(d: dict[str, Any] | None) -> list[Goal]:
    """The report's line for item 5: GPU images/s and one query against this machine's CPU."""
    area, goal = "GPU", "images/s and one query on a GPU (FUSION_DEVICE) against the CPU"
    gpu_rows = [r for r in (d or {}).get("rows", []) if str(r["device"]).startswith("cuda")]
    if not gpu_rows:
        return [Goal(area, goal, f"{NOT_MEASURED}: no GPU was lent to the recording machine; "
                                 f"`{SCRIPT}` is the prepared script", NOT_MEASURED)]
    text = "; ".join(f"{r['model']}: {r['images_per_s']:,.0f} images/s "
                     f"({r['images_x_cpu']:.1f}× the CPU), one query p50 "
                     f"{r['query_p50_ms']:.2f} ms ({r['query_x_cpu']:.1f}×), cosine "
                     f"{min(r['image_cosine'], r['text_cosine']):.5f}" for r in gpu_rows)
    return [Goal(area, goal, text, "reported" + (" (quick run)" * bool(d and d["quick"])))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=SCRIPT, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device to compare with the CPU")
    p.add_argument("--models", help="comma-separated model names")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", help="results folder (default bench/results, quick: .../quick)")
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"{SCRIPT}: no GPU here (torch sees none); nothing measured", file=sys.stderr)
        return 2
    command = shlex.join([*SCRIPT.split(), *(argv if argv is not None else sys.argv[1:])])
    run(Options(quick=args.quick, out=resolve_out(args.out, args.quick), command=command),
        args.device, args.models.split(",") if args.models else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
