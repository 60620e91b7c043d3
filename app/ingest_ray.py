"""Bulk ingest on Ray Data: `fusion-search ingest PATHS --ray [auto|ADDRESS]`.

Two passes over the listed files (app.ingest.iter_sources: folders, files, TSV/CSV tables):

1. hash: Ray tasks read each file and take its sha256; the driver drops what the catalog
   already holds (Store.get_by_sha) and repeats within the run, so a re-run encodes nothing;
2. decode + encode: Ray tasks decode (the single-process decode, JPEG draft included), an actor
   pool encodes (one model per actor, one GPU per actor where the cluster has GPUs) and the
   driver alone writes the batches to the catalog through SearchService.commit_uploads, the
   single-process path's own write.

Files that cannot be read or decoded are reported and skipped. An encoder actor that dies is
restarted and its batch retried; the driver only sees finished batches, and the catalog's
sha256 dedup makes a batch committed twice impossible anyway.

Ray is the optional ``scale`` extra; nothing here is imported unless --ray is given.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .ingest import DRAFT_MARGIN, IngestReport, IngestSettingsError, iter_sources

if TYPE_CHECKING:
    from index import Upload

    from .service import SearchService

log = logging.getLogger("fusion-search")

Batch = dict[str, np.ndarray]
# the hash and decode tasks are light next to an encoder: each asks Ray for this share of a CPU
TASK_CPUS = 0.25
_CUDA = re.compile(r"cuda(?::\d+)?")


@dataclass(frozen=True)
class EncoderPlan:
    """Where the encoder actors run: how many, on what device, with which Ray resources."""

    encoders: int
    device: str  # "cpu", or "cuda": each actor sees the one GPU Ray gave it as cuda
    num_cpus: float
    num_gpus: float
    torch_threads: int
    tasks: int  # hash/decode tasks in flight at once


def plan_encoders(device: str, cluster: dict[str, float], encoders: int | None) -> EncoderPlan:
    """The actor pool for a device setting (auto, cpu, cuda, cuda:N) on a cluster with these
    resources (``ray.cluster_resources()``). ``auto`` takes the cluster's GPUs where it has
    any; ``cuda:N`` means a GPU too (which one is Ray's choice). On GPUs the pool has one
    actor per GPU unless ``encoders`` says otherwise; on CPUs ``encoders`` actors (default 2)
    share the CPUs, leaving a quarter of them (at most one) to the decode tasks.

    Raises IngestSettingsError for a malformed device, or a GPU asked of a cluster without one.
    """
    from models.device import DEVICE_CHOICES

    value = device.strip().lower()
    cpus = max(1.0, float(cluster.get("CPU", 1.0)))
    gpus = int(cluster.get("GPU", 0))
    if value not in ("auto", "cpu") and not _CUDA.fullmatch(value):
        raise IngestSettingsError(f"unknown device {device!r}; use {DEVICE_CHOICES}")
    if value != "cpu" and gpus:
        n = max(1, encoders or gpus)
        return EncoderPlan(encoders=n, device="cuda", num_cpus=1.0, num_gpus=1.0,
                           torch_threads=1, tasks=max(1, int(cpus) - n))
    if _CUDA.fullmatch(value):
        raise IngestSettingsError(f"device {device!r} asks for a GPU, but the Ray cluster has "
                                  "none; use cpu, or auto to take GPUs only where there are some")
    n = max(1, encoders or 2)
    for_tasks = min(1.0, cpus / 4)
    share = max(TASK_CPUS, (cpus - for_tasks) / n)
    return EncoderPlan(encoders=n, device="cpu", num_cpus=share, num_gpus=0.0,
                       torch_threads=max(1, round(share)),
                       tasks=max(1, int(for_tasks / TASK_CPUS)))


# ---- the remote stages (run in Ray workers) -----------------------------------------------------

def hash_files(batch: Batch) -> Batch:
    """sha256 of each file, or in its place why it cannot be read."""
    digests, errors = [], []
    for path in batch["path"]:
        try:
            digests.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
            errors.append("")
        except OSError as exc:
            digests.append("")
            errors.append(str(exc) or type(exc).__name__)  # never empty: empty means readable
    return {**batch, "sha256": np.array(digests), "error": np.array(errors)}


def decode_files(batch: Batch, max_pixels: int, reduce_to: tuple[int, int]) -> Batch:
    """The file's bytes and its decoded RGB pixels (reduced as the single-process ingest does),
    or why it cannot be decoded; pixels travel as raw bytes with their width and height."""
    from models import BadImage, decode_image

    out: dict[str, list[Any]] = {k: [] for k in
                                 ("data", "ext", "content_type", "width", "height", "pixels",
                                  "pixel_w", "pixel_h", "error")}
    for path in batch["path"]:
        row: dict[str, Any] = {"data": b"", "ext": "", "content_type": "", "width": 0,
                               "height": 0, "pixels": b"", "pixel_w": 0, "pixel_h": 0,
                               "error": ""}
        try:
            data = Path(path).read_bytes()
            img = decode_image(data, max_pixels, reduce_to=reduce_to)
            row.update(data=data, ext=img.ext, content_type=img.content_type, width=img.width,
                       height=img.height, pixels=img.image.tobytes(),
                       pixel_w=img.image.width, pixel_h=img.image.height)
        except (OSError, BadImage) as exc:
            row["error"] = str(exc) or type(exc).__name__
        for key, value in row.items():
            out[key].append(value)
    arrays = {k: np.array(v, dtype=object) for k, v in out.items()}
    for key in ("width", "height", "pixel_w", "pixel_h"):
        arrays[key] = np.asarray(out[key], dtype=np.int64)
    arrays["error"] = np.array(out["error"])
    return {**batch, **arrays}


class ImageEncoder:
    """One model per actor, loaded once; encodes the decoded rows of each batch (embedding and
    patch tokens) and passes undecodable rows through with a zero embedding and their error."""

    def __init__(self, load_args: dict[str, Any], device: str, torch_threads: int) -> None:
        import torch

        from models import load_model
        from models.device import resolve_device

        torch.set_num_threads(torch_threads)
        self.model = load_model(**load_args, device=resolve_device(device))

    def __call__(self, batch: Batch) -> Batch:
        from PIL import Image

        ok = [i for i, err in enumerate(batch["error"]) if not err]
        n, dim = len(batch["error"]), self.model.embed_dim
        emb = np.zeros((n, dim), np.float32)
        tokens: np.ndarray | None = None
        if ok:
            images = [Image.frombytes("RGB", (int(batch["pixel_w"][i]), int(batch["pixel_h"][i])),
                                      batch["pixels"][i]) for i in ok]
            vecs, tok = self.model.encode_images_with_tokens(images)
            emb[ok] = vecs
            if tok is not None:
                tokens = np.zeros((n, *tok.shape[1:]), np.float16)
                tokens[ok] = tok
        out = {k: v for k, v in batch.items() if k not in ("pixels", "pixel_w", "pixel_h")}
        # raw bytes, not tensor columns: Ray Data's Arrow tensor arrays can fail to convert back
        # to numpy when a batch spans blocks ("buffer is too small for requested array")
        out["embedding"] = _rows_as_bytes(emb)
        if tokens is not None:
            out["tokens"] = _rows_as_bytes(tokens)
            out["tokens_rows"] = np.full(n, tokens.shape[1], np.int64)  # 1-d columns only
            out["tokens_width"] = np.full(n, tokens.shape[2], np.int64)
        return out


def _rows_as_bytes(arr: np.ndarray) -> np.ndarray:
    out = np.empty(len(arr), dtype=object)
    for i, row in enumerate(arr):
        out[i] = np.ascontiguousarray(row).tobytes()
    return out


# ---- the driver ---------------------------------------------------------------------------------

def _connect(address: str) -> bool:
    """Join the cluster at ``address`` (``auto``: a running one this machine knows of, else a
    new local one); True when this call started Ray (and so shuts it down after)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=None if address == "auto" else address, log_to_driver=False,
             include_dashboard=False if address == "auto" else None)
    return True


def ingest_ray(paths: Sequence[str], *, address: str = "auto",
               data_dir: str | Path | None = None, device: str | None = None,
               caption: str | None = None, tags: Sequence[str] | None = None, batch: int = 64,
               encoders: int | None = None, encoder_cls: type[ImageEncoder] = ImageEncoder,
               ) -> IngestReport:
    """Like app.ingest.ingest, the work spread over a Ray cluster (see the module docstring).

    ``address``: ``auto`` or a Ray address (``ray://host:10001``, ``host:6379``); an already
    initialised Ray (ray.init in this process) is used as it is. ``encoders``: actors in the
    pool (default: one per GPU, or 2 on CPUs). ``encoder_cls``: the actor class (a subclass
    of ImageEncoder). The cluster's workers need fusion-search installed, as the driver has it.

    Raises IngestSettingsError when Ray is not installed, for unusable settings, or a device the
    cluster cannot give; SystemExit for a table without a 'filepath' column; StorageFull (from
    the catalog) stops the run with the batches before it stored.
    """
    try:
        import ray  # noqa: F401
        import ray.data
    except ImportError as exc:
        raise IngestSettingsError(
            "--ray needs Ray: pip install 'fusion-search[scale]'") from exc
    from pydantic import ValidationError

    from .main import build_service
    from .routers.images import parse_tags
    from .settings import Settings

    requested = device or os.environ.get("FUSION_DEVICE", "auto")
    overrides: dict[str, Any] = {"device": "cpu"}  # the driver only writes; actors encode
    if data_dir:
        overrides["data_dir"] = data_dir
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise IngestSettingsError(str(exc)) from exc
    sources = list(iter_sources(paths))
    started = _connect(address)
    try:
        plan = plan_encoders(requested, ray.cluster_resources(), encoders)
        service = build_service(settings.model_copy(update={"demo": False}))
        try:
            return _run(service, settings, plan, sources, caption, parse_tags(list(tags or [])),
                        batch, encoder_cls)
        finally:
            service.store.close()
    finally:
        if started:
            ray.shutdown()


def _run(service: SearchService, settings: Any, plan: EncoderPlan,
         sources: list[tuple[Path, str | None]], caption: str | None, tag_list: list[str],
         batch: int, encoder_cls: type[ImageEncoder]) -> IngestReport:
    import ray.data
    from tqdm import tqdm

    report = IngestReport()
    log.info("ray ingest: %d files, %d %s encoder(s) (%.2f CPU, %.0f GPU each)", len(sources),
             plan.encoders, plan.device, plan.num_cpus, plan.num_gpus)
    bar = tqdm(total=len(sources), desc="ingest", unit="img")
    try:
        todo = _new_files(service, sources, report, bar, plan, batch)
        if not todo:
            return report
        h, w = service.model.image_size
        ds = (ray.data.from_items(todo, override_num_blocks=max(1, len(todo) // batch))
              .map_batches(decode_files, batch_size=batch, num_cpus=TASK_CPUS,  # type: ignore[arg-type]
                           compute=ray.data.TaskPoolStrategy(size=plan.tasks),
                           fn_kwargs={"max_pixels": settings.max_pixels,
                                      "reduce_to": (w * DRAFT_MARGIN, h * DRAFT_MARGIN)})
              .map_batches(encoder_cls, batch_size=batch,
                           compute=ray.data.ActorPoolStrategy(size=plan.encoders),
                           fn_constructor_kwargs={"load_args": _load_args(settings),
                                                  "device": plan.device,
                                                  "torch_threads": plan.torch_threads},
                           num_cpus=plan.num_cpus, num_gpus=plan.num_gpus or None,
                           max_restarts=-1, max_task_retries=-1))
        for encoded in ds.iter_batches(batch_size=batch, batch_format="numpy"):
            uploads = list(_uploads(encoded, caption, tag_list, report))
            if uploads:
                for _, dup in service.commit_uploads(uploads):
                    report.added += not dup
                    report.already_present += dup  # stored by someone else since pass 1
            bar.update(len(encoded["sha256"]))
            bar.set_postfix(added=report.added, skipped=report.already_present,
                            bad=len(report.bad))
    finally:
        bar.close()
    return report


def _new_files(service: SearchService, sources: list[tuple[Path, str | None]],
               report: IngestReport, bar: Any, plan: EncoderPlan,
               batch: int) -> list[dict[str, Any]]:
    """Pass 1: the sources that are readable, not in the catalog and not repeats in this run;
    the others are counted (already present) or reported (bad) here."""
    import ray.data

    if not sources:
        return []
    rows = [{"path": str(p), "title": t or ""} for p, t in sources]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // (batch * 4))) \
        .map_batches(hash_files, batch_size=batch * 4, num_cpus=TASK_CPUS,
                     compute=ray.data.TaskPoolStrategy(size=plan.tasks))
    todo: list[dict[str, Any]] = []
    seen: set[str] = set()
    for hashed in ds.iter_batches(batch_size=batch * 4, batch_format="numpy"):
        for path, title, sha, err in zip(hashed["path"], hashed["title"], hashed["sha256"],
                                         hashed["error"], strict=True):
            if err:
                report.bad.append((str(path), str(err)))
            elif sha in seen or service.store.get_by_sha(str(sha)) is not None:
                report.already_present += 1
            else:
                seen.add(str(sha))
                todo.append({"path": str(path), "title": str(title), "sha256": str(sha)})
                continue
            bar.update(1)
    return todo


def _uploads(encoded: Batch, caption: str | None, tag_list: list[str],
             report: IngestReport) -> Iterator[Upload]:
    from index import Upload

    from .service import _safe_name

    tokens = encoded.get("tokens")
    for i, path in enumerate(encoded["path"]):
        if encoded["error"][i]:
            report.bad.append((str(path), str(encoded["error"][i])))
            continue
        yield Upload(
            data=bytes(encoded["data"][i]), sha256=str(encoded["sha256"][i]),
            ext=str(encoded["ext"][i]), content_type=str(encoded["content_type"][i]),
            embedding=np.frombuffer(bytes(encoded["embedding"][i]), np.float32).copy(),
            tokens=None if tokens is None else np.frombuffer(bytes(tokens[i]), np.float16)
            .reshape(int(encoded["tokens_rows"][i]), int(encoded["tokens_width"][i])).copy(),
            width=int(encoded["width"][i]), height=int(encoded["height"][i]),
            original_name=_safe_name(Path(str(path)).name),
            caption=caption or (str(encoded["title"][i]) or None), tags=tag_list)


def _load_args(settings: Any) -> dict[str, Any]:
    """load_model's arguments as build_service passes them, less the device (the plan's)."""
    return {"name": settings.model, "pretrained": settings.pretrained,
            "fusion": settings.fusion_weights, "precision": settings.precision,
            "runtime": settings.runtime, "cache_dir": settings.runtime_cache}
