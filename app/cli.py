"""The `fusion-search` command: serve, ingest, backup, reembed, demo-data, train, eval,
calibrate, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("fusion-search")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
# ingest decodes a JPEG reduced to no less than this many times the model's input size
DRAFT_MARGIN = 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from .settings import Settings
    from .startup import StartupError, preflight

    if args.data:
        os.environ["FUSION_DATA_DIR"] = str(args.data)
    if args.demo:
        os.environ["FUSION_DEMO"] = "true"
    # Refused starts end here with one message and status 2, before a port is bound or the
    # model loads (a failure in the app's lifespan would print uvicorn's stack trace).
    try:
        preflight(args.host, Settings())
    except (StartupError, ValidationError) as exc:
        print(f"fusion-search serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port,
                log_level=args.log_level, workers=1)
    return 0


def iter_sources(paths: Sequence[str]) -> Iterator[tuple[Path, str | None]]:
    """(image path, caption) from folders (recursive), files, and TSVs (filepath, title)."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    yield f, None
        elif p.suffix.lower() in (".tsv", ".csv"):
            yield from _read_table(p)
        else:
            yield p, None


def _read_table(path: Path) -> Iterator[tuple[Path, str | None]]:
    import csv

    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=delim)
        if not reader.fieldnames or "filepath" not in reader.fieldnames:
            raise SystemExit(f"{path}: needs a 'filepath' column (and optionally 'title')")
        for row in reader:
            fp = Path(row["filepath"])
            yield (fp if fp.is_absolute() else path.parent / fp), (row.get("title") or None)


def _ingest(args: argparse.Namespace) -> int:
    import gc
    from collections import deque

    # Start-up allocates millions of long-lived objects (torch, open_clip): collecting cycles
    # among them is wasted work (~0.7 s), so collection waits until the model is loaded and
    # those objects are then frozen out of every later collection.
    gc.disable()
    try:
        import torch
        from pydantic import ValidationError
        from tqdm import tqdm

        from index import Item, Upload
        from models import BadImage, DecodedImage, decode_image

        from .main import build_service
        from .routers.images import parse_tags
        from .settings import Settings

        overrides = {k: v for k, v in (("data_dir", args.data), ("device", args.device)) if v}
        try:
            settings = Settings(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:  # e.g. --device cuda on a machine without a GPU
            print(f"fusion-search ingest: {exc}", file=sys.stderr)
            return 2
        service = build_service(settings.model_copy(update={"demo": False}))
    finally:
        gc.freeze()
        gc.enable()
    sources = list(iter_sources(args.paths))
    tags = parse_tags(args.tags or [])
    bad: list[tuple[str, str]] = []
    added = skipped = 0
    Record = tuple[bytes, DecodedImage, str | None, str | None, list[str]]

    # The encoder shrinks every image to its input size anyway: a JPEG is decoded by libjpeg at
    # 1/2, 1/4 or 1/8 scale while at least DRAFT_MARGIN times that size, so the encoder's own
    # bicubic resize still does (at least half of) the reduction and the embedding stays that
    # of the full decode (cosine >= 0.99), at a fraction of the decode and resize cost.
    h, w = service.model.image_size
    reduce_to = (w * DRAFT_MARGIN, h * DRAFT_MARGIN)
    # Several encoder threads, each with its share of the cores for torch: a small model's
    # forward pass does not keep two cores busy, and one team per core never waits on the
    # decode or commit threads the way a two-thread team does on a two-core machine.
    encoders = max(1, args.encoders)
    torch_threads = torch.get_num_threads()
    if not settings.torch_threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // encoders))

    def load(src: tuple[Path, str | None]) -> tuple[Path, str | None, bytes, DecodedImage | str]:
        """The file's bytes and decoded image, or in its place why it cannot be decoded."""
        path, caption = src
        try:
            data = path.read_bytes()
            return path, caption, data, decode_image(data, settings.max_pixels,
                                                     reduce_to=reduce_to)
        except (OSError, BadImage) as exc:
            return path, caption, b"", str(exc)

    def commit(records: list[Record], uploads: list[Upload]) -> list[tuple[Item, bool]]:
        try:
            return service.commit_uploads(uploads)
        except ValueError:
            # an image stored when the batch was prepared was deleted since: encode it after all
            log.info("a stored original was deleted during ingest; re-encoding its batch")
            return service.commit_uploads(service.prepare_uploads(records))

    def tally(results: Sequence[tuple[Item, bool]]) -> None:
        nonlocal added, skipped
        for _, dup in results:
            added, skipped = added + (not dup), skipped + dup
        bar.set_postfix(added=added, skipped=skipped, bad=len(bad))

    # Three stages at once: the pool decodes batch i+1, `encoders` threads encode the batches
    # before it and one writer thread commits the oldest encoded batch (file and SQLite
    # fsyncs). One writer keeps the commits in input order; waiting on its previous commit
    # before submitting the next one re-raises its error (StorageFull, say) here and stops the
    # run with nothing after it written. An image repeated across neighbouring batches is
    # encoded twice but stored once: add_many checks the digests again inside its transaction.
    chunks = [sources[s : s + args.batch] for s in range(0, len(sources), args.batch)]
    bar = tqdm(total=len(sources), desc="ingest", unit="img")
    encoding: deque[tuple[list[Record], Future[list[Upload]], int]] = deque()
    committing: Future[list[tuple[Item, bool]]] | None = None

    def commit_oldest() -> None:
        nonlocal committing
        records, prepared, n = encoding.popleft()
        uploads = prepared.result()
        if committing is not None:
            tally(committing.result())
        committing = writer.submit(commit, records, uploads) if uploads else None
        bar.update(n)

    try:
        with ThreadPoolExecutor(max_workers=args.workers) as pool, \
                ThreadPoolExecutor(max_workers=encoders) as encoder, \
                ThreadPoolExecutor(max_workers=1) as writer:
            decoding = [pool.submit(load, src) for src in chunks[0]] if chunks else []
            for i in range(len(chunks)):
                loaded = [f.result() for f in decoding]
                if i + 1 < len(chunks):
                    decoding = [pool.submit(load, src) for src in chunks[i + 1]]
                records: list[Record] = []
                for path, caption, data, img in loaded:
                    if isinstance(img, str):
                        bad.append((str(path), img))
                    else:
                        records.append((data, img, path.name, args.caption or caption, tags))
                if len(encoding) == encoders:
                    commit_oldest()
                encoding.append((records, encoder.submit(service.prepare_uploads, records),
                                 len(loaded)))
            while encoding:
                commit_oldest()
            if committing is not None:
                tally(committing.result())
    finally:
        bar.close()
        service.store.close()
        torch.set_num_threads(torch_threads)  # as it was, when called in-process (tests)
        gc.unfreeze()
    for name, why in bad:
        print(f"skipped {name}: {why}", file=sys.stderr)
    print(json.dumps({"added": added, "already_present": skipped, "bad": len(bad)}))
    return 0


def _backup(args: argparse.Namespace) -> int:
    """Copy a data dir's catalog (SQLite online backup) and the files it names, consistently,
    while a server may be using it. The FAISS index is left out: it is rebuilt on start."""
    import shutil

    from index.catalog import Catalog
    from index.files import FileStore
    from index.store import CATALOG_NAME, FILES_DIR

    from .settings import Settings

    src = Path(args.data) if args.data else Settings().data_dir
    dest = Path(args.dest)
    if not (src / CATALOG_NAME).is_file():
        raise SystemExit(f"{src} holds no {CATALOG_NAME}: not a data dir")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} exists and is not empty")
    (dest / FILES_DIR).mkdir(parents=True, exist_ok=True)
    live = Catalog(src / CATALOG_NAME)
    try:
        live.backup(dest / CATALOG_NAME)
    finally:
        live.close()
    copy = Catalog(dest / CATALOG_NAME)
    try:
        src_files, dest_files = FileStore(src / FILES_DIR), FileStore(dest / FILES_DIR)
        gone = set()
        names = sorted(copy.all_files())
        for name in names:
            target = dest_files.path(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(src_files.path(name), target)
            except FileNotFoundError:  # deleted from the live dir after the catalog copy
                gone.add(name)
        # Drop the rows whose files were deleted meanwhile: the copy never names a missing file.
        dropped = [it.id for it in copy.list(0, max(copy.count(), 1))[0] if it.file in gone]
        for item_id in dropped:
            copy.delete(item_id)
        check, count = copy.integrity_check(), copy.count()
    finally:
        copy.close()
    os.sync()
    print(json.dumps({"dest": str(dest), "items": count, "files": len(names) - len(gone),
                      "dropped_deleted_meanwhile": len(dropped), "integrity": check}))
    return 0 if check == "ok" else 1


def _reembed(args: argparse.Namespace) -> int:
    """Re-encode every image of an old data dir (or a backup of one) into a new data dir with
    the configured model, keeping captions, tags and original names (ids are new)."""
    from index.catalog import Catalog
    from index.files import FileStore
    from index.store import CATALOG_NAME, FILES_DIR
    from models import decode_image

    from .main import build_service
    from .settings import Settings

    source = Path(args.source)
    settings = Settings(data_dir=args.data) if args.data else Settings()
    if settings.data_dir.resolve() == source.resolve():
        raise SystemExit("re-embed into a new data dir, not the source")
    service = build_service(settings.model_copy(update={"demo": False}))
    old, files = Catalog(source / CATALOG_NAME), FileStore(source / FILES_DIR)
    added = 0
    try:
        newest_first, total = old.list(0, max(old.count(), 1))
        oldest_first = newest_first[::-1]
        for start in range(0, total, args.batch):
            records = []
            for it in oldest_first[start : start + args.batch]:
                data = files.path(it.file).read_bytes()
                records.append((data, decode_image(data, settings.max_pixels),
                                it.original_name, it.caption, it.tags))
            added += sum(not dup for _, dup in service.store_decoded(records))
    finally:
        old.close()
        service.store.close()
    print(json.dumps({"source_items": total, "added": added, "model": service.model.name,
                      "dim": service.model.embed_dim}))
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from models import synthetic as syn

    tsv = syn.write_dataset(Path(args.out), args.n, split=args.split)
    print(tsv)
    return 0


def _train(args: argparse.Namespace) -> int:
    from models.train import TrainConfig, run

    # the step counts and sizes left out keep TrainConfig's defaults: the recipe is stated once
    sizes = {k: getattr(args, k) for k in ("encoder_steps", "fusion_steps", "batch", "pool",
                                           "triplets", "threads", "image_size", "randomise",
                                           "paraphrase")}
    cfg = TrainConfig(model=args.backbone, pretrained=args.pretrained, data=args.data,
                      out=args.out, work_dir=args.work_dir,
                      **{k: v for k, v in sizes.items() if v is not None})
    result = run(cfg, plot=Path(args.plot) if args.plot else None)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("loss")}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from models import load_model
    from models.evaluate import evaluate, format_table

    model = load_model(args.model, args.pretrained, fusion=args.fusion, precision=args.precision,
                       image_size=args.image_size, device=args.device)
    report = evaluate(model, n=args.n, depth=args.depth, ood_split=args.ood_split)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from models import load_model
    from models.calibrate import calibrate, write_temperature
    from models.encoder import bundled_paths

    model = load_model(args.model, args.pretrained, fusion=args.fusion, precision=args.precision)
    result = calibrate(model, n=args.n, depth=args.depth,
                       plot_path=Path(args.plot) if args.plot else None)
    target = (Path(args.fusion.replace(".safetensors", ".json")) if args.fusion
              else bundled_paths(args.model)[2])
    if args.write:
        write_temperature(target, result)
    print(json.dumps({**result, "written_to": str(target) if args.write else None}))
    return 0


def _bench(args: argparse.Namespace) -> int:
    # bench/ is imported only here, when the sub-command runs: the service, the other
    # commands and `--help` start without it (it need not even be installed).
    try:
        from bench.run import build_parser as bench_parser
        from bench.run import run
    except ImportError as exc:
        raise SystemExit(f"fusion-search bench needs the bench package ({exc}); "
                         "run it from a source checkout: pip install -e '.[bench]'") from exc
    return run(bench_parser().parse_args(args.bench_argv))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion-search", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only); another one needs "
                        "FUSION_API_KEY or FUSION_ALLOW_OPEN_WRITES=true")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--data", help="data dir (default FUSION_DATA_DIR or ./data)")
    s.add_argument("--demo", action="store_true", help="seed generated scenes when empty")
    s.add_argument("--log-level", default="info")
    s.set_defaults(fn=_serve)

    s = sub.add_parser("ingest", help="add images from folders, files or a TSV")
    s.add_argument("paths", nargs="+")
    s.add_argument("--data")
    s.add_argument("--caption", help="caption for every image (TSV titles otherwise)")
    s.add_argument("--tags", action="append", help="tags for every image (comma-separated)")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2),
                   help="decoding threads")
    s.add_argument("--encoders", type=int, default=2,
                   help="batches encoded at once (torch threads are shared out among them)")
    s.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: FUSION_DEVICE, auto)")
    s.set_defaults(fn=_ingest)

    s = sub.add_parser("backup", help="copy a data dir (catalog + files), safe while serving")
    s.add_argument("dest", help="a new or empty folder; restore by serving it as the data dir")
    s.add_argument("--data", help="data dir (default FUSION_DATA_DIR or ./data)")
    s.set_defaults(fn=_backup)

    s = sub.add_parser("reembed", help="re-encode a data dir's images into a new data dir "
                                          "with the configured model (a model upgrade)")
    s.add_argument("source", help="the old data dir or a backup of it (not being written to)")
    s.add_argument("--data", help="the new data dir (default FUSION_DATA_DIR or ./data)")
    s.add_argument("--batch", type=int, default=64)
    s.set_defaults(fn=_reembed)

    s = sub.add_parser("demo-data", help="write generated scenes (PNG) and captions.tsv")
    s.add_argument("out")
    s.add_argument("--n", type=int, default=300)
    s.add_argument("--split", default="val", choices=["train", "val", "test", "heldout"])
    s.set_defaults(fn=_demo_data)

    s = sub.add_parser("train", help="train the dual encoder and fusion heads")
    s.add_argument("--backbone", default="fusion-tiny")
    s.add_argument("--pretrained", default=None)
    s.add_argument("--data", default=None, help="TSV of your own captioned images")
    s.add_argument("--out", default="models/weights")
    s.add_argument("--work-dir", default="runs/train")
    # defaults (None here): models.train.TrainConfig, the bundled recipe
    s.add_argument("--encoder-steps", type=int, help="stage-1 steps")
    s.add_argument("--fusion-steps", type=int, help="stage-2 steps")
    s.add_argument("--batch", type=int)
    s.add_argument("--pool", type=int, help="rendered training scenes")
    s.add_argument("--triplets", type=int, help="rendered composed triplets")
    s.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    s.add_argument("--image-size", type=int,
                   help="input size other than the backbone config's (serve it with the same)")
    s.add_argument("--randomise", type=float,
                   help="share of training scenes with domain randomisation (default 0)")
    s.add_argument("--paraphrase", type=float,
                   help="share of stage-1 captions with surface noise (default 0)")
    s.add_argument("--plot", default="docs/training-loss.png")
    s.set_defaults(fn=_train)

    s = sub.add_parser("eval", help="retrieval metrics in distribution (the synthetic test "
                                       "split) and out of it (the OOD renderer), side by side")
    s.add_argument("--model", default="fusion-tiny")
    s.add_argument("--pretrained", default=None)
    s.add_argument("--fusion", default=None,
                   help="fusion-head safetensors (default: the bundled heads, bundled backbone)")
    s.add_argument("--precision", default="auto")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--n", type=int, default=1000, help="gallery size")
    s.add_argument("--depth", type=int, default=20, help="re-rank depth")
    s.add_argument("--image-size", type=int, help="the input size the backbone was trained at")
    s.add_argument("--ood-split", default="ood-test", choices=["ood-test", "ood-val"],
                   help="OOD split: ood-test to report, ood-val for choices made after training")
    s.add_argument("--json", action="store_true", help="the full report as JSON (default: a "
                                                       "table of every metric, both worlds)")
    s.set_defaults(fn=_eval)

    s = sub.add_parser("calibrate", help="fit the match head's temperature on the OOD "
                                            "validation split; reliability diagrams (PNG)")
    s.add_argument("--model", default="fusion-tiny")
    s.add_argument("--pretrained", default=None)
    s.add_argument("--fusion", default=None, help="fusion-head safetensors (default: bundled)")
    s.add_argument("--precision", default="auto")
    s.add_argument("--n", type=int, default=1000, help="gallery size of each split")
    s.add_argument("--depth", type=int, default=20, help="candidates per query (re-rank depth)")
    s.add_argument("--plot", default="docs/reliability.png")
    s.add_argument("--write", action="store_true",
                   help="record the temperature in the fusion heads' JSON file")
    s.set_defaults(fn=_calibrate)

    # Its options belong to bench.run and are parsed there (`fusion-search bench --help`).
    s = sub.add_parser("bench", add_help=False,
                       help="benchmarks (JSON + PNG under bench/results) and docs/benchmarks.md")
    s.set_defaults(fn=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "bench":
        args.bench_argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
