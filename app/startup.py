"""Checks `fusion-search serve` runs before it binds a port: each failure is one clear message.

- Safe by default on a network: no listening on a non-loopback address while uploads and deletes
  need no key, unless the operator says so (``FUSION_ALLOW_OPEN_WRITES=true``), in the manner
  of Redis's protected mode.
- Pretrained weights at hand: an open_clip tag (``FUSION_PRETRAINED=laion2b_s34b_b79k``) is
  fetched once into the Hugging Face cache (``HF_HOME``; keep it on a volume) where downloads are
  allowed, found there where they are not (``HF_HUB_OFFLINE=1``), and otherwise named in the
  error with the way to mount a checkpoint file instead, never a stack trace from the lifespan.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class StartupError(Exception):
    """The server must not start; the message says why and how to fix it."""


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]")
    if not host:
        return False  # uvicorn binds every interface
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_bind(host: str, settings: Settings) -> None:
    """Refuse a reachable address while writes are open.

    Writes are open when no ``FUSION_API_KEY`` is set; the address is reachable unless it is a
    loopback one. ``FUSION_ALLOW_OPEN_WRITES=true`` lets it start anyway.

    Raises:
        StartupError: with the three ways out.
    """
    if settings.api_key is not None or is_loopback(host):
        return
    if settings.allow_open_writes:
        log.warning("serving on %s with uploads and deletes open to anyone who can reach it "
                    "(FUSION_ALLOW_OPEN_WRITES=true, no FUSION_API_KEY)", host)
        return
    raise StartupError(
        f"refusing to start: --host {host} is reachable from other machines, and uploads and "
        "deletes would need no key (FUSION_API_KEY is not set).\n"
        "Do one of these:\n"
        "  1) set FUSION_API_KEY to a long random secret, e.g.\n"
        "       export FUSION_API_KEY=$(python3 -c 'import secrets; "
        "print(secrets.token_urlsafe(32))')\n"
        "     clients then send it in the X-API-Key header (reads stay open unless "
        "FUSION_PROTECT_READS=true);\n"
        "  2) listen on this machine only: --host 127.0.0.1;\n"
        "  3) on a network you trust, set FUSION_ALLOW_OPEN_WRITES=true to start anyway."
    )


def _looks_like_file(value: str) -> bool:
    return os.sep in value or "/" in value or value.lower().endswith(CHECKPOINT_SUFFIXES)


def check_weights(settings: Settings) -> None:
    """Make sure the weights ``FUSION_PRETRAINED`` names are on this machine before serving.

    A file must exist; a tag must be one open_clip knows for ``FUSION_MODEL``, and is downloaded
    into the Hugging Face cache unless it is there already or downloads are off. Nothing to do
    for the bundled model (no ``FUSION_PRETRAINED``).

    Raises:
        StartupError: a missing file, an unknown tag, or weights that cannot be fetched.
    """
    name, tag = settings.model, settings.pretrained
    if tag is None or Path(tag).expanduser().is_file():
        return
    if _looks_like_file(tag):
        raise StartupError(f"FUSION_PRETRAINED={tag}: no such file (for model {name!r}). "
                           "Mount the checkpoint there, or give an open_clip pretrained tag.")
    from open_clip import pretrained as oc

    cfg: dict[str, Any] = oc.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = oc.list_pretrained_tags_by_model(name)
        known = (f"its tags: {', '.join(tags)}" if tags else
                 "none for that name: leave FUSION_PRETRAINED unset for a bundled model")
        raise StartupError(f"open_clip has no pretrained tag {tag!r} for model {name!r} "
                           f"({known}). Set FUSION_PRETRAINED to one of them or to a checkpoint "
                           "file.")
    _fetch(name, tag, cfg)


def _fetch(name: str, tag: str, cfg: dict[str, Any]) -> None:
    from huggingface_hub import constants
    from open_clip import pretrained as oc

    offline = bool(constants.HF_HUB_OFFLINE)
    hub, url = str(cfg.get("hf_hub", "")), str(cfg.get("url", ""))
    repo, filename = os.path.split(hub) if hub else ("", os.path.basename(url))
    source = f"{constants.ENDPOINT}/{repo}" if hub else url  # HF_ENDPOINT: a mirror
    filename = filename or "open_clip_pytorch_model.bin"  # open_clip's default name on the hub

    def unavailable(reason: str = "") -> StartupError:
        return StartupError(_unavailable(name, tag, source, filename, constants.HF_HUB_CACHE,
                                         offline, reason))

    if not hub and offline:
        # open_clip fetches URL-only tags with urllib, which HF_HUB_OFFLINE does not stop
        if (Path("~/.cache/clip").expanduser() / filename).is_file():
            return
        raise unavailable()
    if not offline:
        cached = _cached_hub_file(hub, constants.HF_HUB_CACHE)
        unreachable = None if cached else _unreachable(constants.ENDPOINT if hub else url)
        if unreachable:
            raise unavailable(unreachable)
        log.info("fetching the weights of %s (%s) from %s into %s, unless cached", name, tag,
                 source, constants.HF_HUB_CACHE)
    try:
        path = oc.download_pretrained(cfg)
    except Exception as exc:  # huggingface_hub and urllib raise many types; all mean "not here"
        text = str(exc).strip()
        raise unavailable(text.splitlines()[0][:300] if text else type(exc).__name__) from None
    if not path or not Path(path).is_file():
        raise unavailable()


def _cached_hub_file(hub: str, cache: str) -> bool:
    """Whether the hub cache holds a snapshot of this repo (then no network is needed)."""
    if not hub:
        return False
    repo = os.path.dirname(hub)
    snapshots = Path(cache) / f"models--{repo.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.glob("*/*"))


def _unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url``'s host cannot be reached, or None when it can (or a proxy decides).

    huggingface_hub retries a failed request five times with back-off, for each file name it
    tries: close to a minute of warnings on a machine without network before the message.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"{parts.hostname}:{port} cannot be reached: {exc}"
    return None


def _unavailable(name: str, tag: str, source: str, filename: str, cache: str, offline: bool,
                 reason: str = "") -> str:
    if offline:
        why = f"its weights are not in the cache ({cache}) and downloads are off (HF_HUB_OFFLINE=1)"
        first = ("start once with network access and HF_HUB_OFFLINE unset: the weights "
                 "download into the cache, under HF_HOME (keep it on a volume so it happens once)")
    else:
        why = f"its weights could not be downloaded from {source} into {cache}"
        first = (f"check that this machine can reach {urlsplit(source).hostname} (a proxy: "
                 "HTTPS_PROXY), then start again: the weights download once into the cache, "
                 "under HF_HOME")
    return (
        f"cannot load model {name!r} with pretrained tag {tag!r}: {why}"
        + (f" ({reason})" if reason and not offline else "") + ".\n"
        "Do one of these:\n"
        f"  1) {first};\n"
        f"  2) fetch its checkpoint {filename} elsewhere ({source}), put the file on this "
        "machine (with Docker, mount it into the container) and point FUSION_PRETRAINED at it:\n"
        f"       FUSION_MODEL={name} FUSION_PRETRAINED=/models/{filename}"
    )


def preflight(host: str, settings: Settings) -> None:
    """Every check `serve` makes before binding; the cheap one first.

    Raises:
        StartupError: the first check that fails.
    """
    check_bind(host, settings)
    check_weights(settings)
