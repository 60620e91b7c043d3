"""The ingest pipeline behind `fusion-search ingest`: images from folders, files and tables are
decoded, encoded and committed to a data dir's catalog, the three stages overlapped in thread
pools. The CLI parses the arguments and calls ingest()."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("fusion-search")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
# ingest decodes a JPEG reduced to no less than this many times the model's input size
DRAFT_MARGIN = 2


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


class IngestSettingsError(ValueError):
    """The settings (environment and arguments) cannot be used; its text is pydantic's."""


@dataclass
class IngestReport:
    """What an ingest run did: images added, images already in the catalog, files skipped."""

    added: int = 0
    already_present: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, why it was skipped)

    def summary(self) -> dict[str, int]:
        return {"added": self.added, "already_present": self.already_present,
                "bad": len(self.bad)}

    def print(self) -> None:
        """Each skipped file and why on stderr, then the JSON summary line on stdout."""
        for name, why in self.bad:
            print(f"skipped {name}: {why}", file=sys.stderr)
        print(json.dumps(self.summary()))


def ingest(paths: Sequence[str], *, data_dir: str | Path | None = None,
           device: str | None = None, caption: str | None = None,
           tags: Sequence[str] | None = None, batch: int = 64, workers: int = 2,
           encoders: int = 2) -> IngestReport:
    """Add the images named by ``paths`` (folders, files, TSV/CSV tables; see iter_sources) to
    the data dir's catalog. ``tags`` are comma-separated strings given to every image.

    Raises IngestSettingsError for settings that cannot be used (``device`` cuda on a machine
    without a GPU, say) before anything is read, and SystemExit for a table without a
    'filepath' column."""
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

        overrides = {k: v for k, v in (("data_dir", data_dir), ("device", device)) if v}
        try:
            settings = Settings(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise IngestSettingsError(str(exc)) from exc
        service = build_service(settings.model_copy(update={"demo": False}))
    finally:
        gc.freeze()
        gc.enable()
    sources = list(iter_sources(paths))
    tag_list = parse_tags(list(tags or []))
    report = IngestReport()
    bad = report.bad
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
    encoders = max(1, encoders)
    torch_threads = torch.get_num_threads()
    if not settings.torch_threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // encoders))

    def load(src: tuple[Path, str | None]) -> tuple[Path, str | None, bytes, DecodedImage | str]:
        """The file's bytes and decoded image, or in its place why it cannot be decoded."""
        path, title = src
        try:
            data = path.read_bytes()
            return path, title, data, decode_image(data, settings.max_pixels,
                                                     reduce_to=reduce_to)
        except (OSError, BadImage) as exc:
            return path, title, b"", str(exc)

    def commit(records: list[Record], uploads: list[Upload]) -> list[tuple[Item, bool]]:
        try:
            return service.commit_uploads(uploads)
        except ValueError:
            # an image stored when the batch was prepared was deleted since: encode it after all
            log.info("a stored original was deleted during ingest; re-encoding its batch")
            return service.commit_uploads(service.prepare_uploads(records))

    def tally(results: Sequence[tuple[Item, bool]]) -> None:
        for _, dup in results:
            report.added += not dup
            report.already_present += dup
        bar.set_postfix(added=report.added, skipped=report.already_present, bad=len(bad))

    # Three stages at once: the pool decodes batch i+1, `encoders` threads encode the batches
    # before it and one writer thread commits the oldest encoded batch (file and SQLite
    # fsyncs). One writer keeps the commits in input order; waiting on its previous commit
    # before submitting the next one re-raises its error (StorageFull, say) here and stops the
    # run with nothing after it written. An image repeated across neighbouring batches is
    # encoded twice but stored once: add_many checks the digests again inside its transaction.
    chunks = [sources[s : s + batch] for s in range(0, len(sources), batch)]
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
        with ThreadPoolExecutor(max_workers=workers) as pool, \
                ThreadPoolExecutor(max_workers=encoders) as encoder, \
                ThreadPoolExecutor(max_workers=1) as writer:
            decoding = [pool.submit(load, src) for src in chunks[0]] if chunks else []
            for i in range(len(chunks)):
                loaded = [f.result() for f in decoding]
                if i + 1 < len(chunks):
                    decoding = [pool.submit(load, src) for src in chunks[i + 1]]
                records: list[Record] = []
                for path, title, data, img in loaded:
                    if isinstance(img, str):
                        bad.append((str(path), img))
                    else:
                        records.append((data, img, path.name, caption or title, tag_list))
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
    return report
