"""What `fusion-search serve` refuses before it binds a port, and what it lets through.

Safe by default on a network: no listening on a reachable address with uploads and deletes open
unless FUSION_ALLOW_OPEN_WRITES=true. A pretrained tag that cannot be had offline stops the
start with a message naming the model and tag and the way to mount a file, not a stack trace.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from api_support import API, make_settings, scene_png
from http_checks import free_port
from serve_support import ServeProcess

from app import cli
from app.startup import StartupError, check_bind, check_weights, is_loopback

TAG_MODEL, TAG = "ViT-B-32", "laion2b_s34b_b79k"


def serve_until_exit(root: Path, timeout: float = 120, **kwargs: str) -> tuple[int, str]:
    """`fusion-search serve` that is to stop on its own: its exit status and its output."""
    srv = ServeProcess(root, **kwargs)
    try:
        code = srv.wait_exit(timeout=timeout)
    finally:
        srv.stop()
    return code, srv.output()


# ---- the bind check ----------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_addresses_are_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.10", "10.0.0.1"])
def test_reachable_addresses_are_not(host: str) -> None:
    assert not is_loopback(host)


def test_the_default_host_is_this_machine_only() -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert is_loopback(args.host)


def test_check_bind_decides_by_address_key_and_override(tmp_path: Path) -> None:
    open_writes = make_settings(tmp_path)
    check_bind("127.0.0.1", open_writes)  # loopback: always allowed
    check_bind("localhost", open_writes)
    with pytest.raises(StartupError) as refused:
        check_bind("0.0.0.0", open_writes)
    message = str(refused.value)
    for hint in ("FUSION_API_KEY", "--host 127.0.0.1", "FUSION_ALLOW_OPEN_WRITES=true"):
        assert hint in message
    check_bind("0.0.0.0", make_settings(tmp_path, api_key="s3cret-key"))  # writes need a key
    check_bind("0.0.0.0", make_settings(tmp_path, allow_open_writes=True))  # said on purpose


def test_serve_refuses_open_writes_on_every_interface(tmp_path: Path) -> None:
    code, out = serve_until_exit(tmp_path, host="0.0.0.0")
    assert code == 2
    assert "refusing to start: --host 0.0.0.0" in out
    assert "FUSION_ALLOW_OPEN_WRITES=true" in out and "FUSION_API_KEY" in out
    assert "Traceback" not in out
    assert not (tmp_path / "data").exists()  # nothing was opened or created


def test_serve_starts_on_every_interface_when_told_to(tmp_path: Path) -> None:
    srv = ServeProcess(tmp_path, host="0.0.0.0", FUSION_ALLOW_OPEN_WRITES="true")
    try:
        srv.wait_ready()  # reached on 127.0.0.1, one of "every interface"
        resp = httpx.post(f"{srv.url}{API}/images", timeout=120,
                          files={"files": ("a.png", scene_png(0), "image/png")})
        assert resp.status_code == 201, resp.text  # writes open, as asked
        listening = socket.create_connection((_outward_address(), srv.port), timeout=5)
        listening.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.output()


def _outward_address() -> str:
    """An address of this machine other than loopback where one exists (else 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outward interface
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def test_serve_rejects_a_bad_setting_without_a_stack_trace(tmp_path: Path) -> None:
    code, out = serve_until_exit(tmp_path, FUSION_ALLOW_OPEN_WRITES="perhaps")
    assert code == 2
    assert "allow_open_writes" in out and "Traceback" not in out


def test_serve_refuses_a_malformed_device_in_one_line(tmp_path: Path) -> None:
    code, out = serve_until_exit(tmp_path, FUSION_DEVICE="cuda:x")
    assert code == 2
    assert "FUSION_DEVICE: unknown device 'cuda:x'" in out and "Traceback" not in out


# ---- pretrained weights ------------------------------------------------------------------------

def test_serve_names_the_tag_and_the_way_out_when_offline(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 (the suite's setting) and an empty cache: the tag cannot be had."""
    code, out = serve_until_exit(tmp_path, timeout=300, FUSION_MODEL=TAG_MODEL,
                                 FUSION_PRETRAINED=TAG, HF_HOME=str(tmp_path / "hf-home"))
    assert code == 2
    assert f"cannot load model '{TAG_MODEL}' with pretrained tag '{TAG}'" in out
    assert "downloads are off (HF_HUB_OFFLINE=1)" in out
    assert str(tmp_path / "hf-home") in out  # where it looked
    assert f"FUSION_MODEL={TAG_MODEL} FUSION_PRETRAINED=/models/" in out  # mount a file instead
    assert "Traceback" not in out
    assert not (tmp_path / "data").exists()


def test_serve_names_the_tag_when_the_hub_cannot_be_reached(tmp_path: Path) -> None:
    """Downloads allowed, but no network: a hub at a closed local port stands for it."""
    hub = f"http://127.0.0.1:{free_port()}"
    no_proxy = {v: "" for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")}
    started = time.monotonic()
    code, out = serve_until_exit(tmp_path, timeout=300, FUSION_MODEL=TAG_MODEL,
                                 FUSION_PRETRAINED=TAG, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub,
                                 HF_HOME=str(tmp_path / "hf-home"), **no_proxy)
    assert code == 2
    assert f"cannot load model '{TAG_MODEL}' with pretrained tag '{TAG}'" in out
    assert "cannot be reached" in out and hub.removeprefix("http://") in out
    assert f"FUSION_MODEL={TAG_MODEL} FUSION_PRETRAINED=/models/" in out
    assert "Traceback" not in out and "Retrying" not in out  # no minute of back-off first
    assert time.monotonic() - started < 120


def test_a_cached_tag_is_used_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag downloaded once is found in the Hugging Face cache with downloads off."""
    from huggingface_hub import constants
    from open_clip import pretrained as oc

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py
    repo, filename = oc.get_pretrained_cfg(TAG_MODEL, TAG)["hf_hub"].rsplit("/", 1)
    revision = "0" * 40
    cache = tmp_path / "hub"
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(revision)
    snapshot = entry / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / (filename or "open_clip_pytorch_model.bin")).write_bytes(b"weights")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    check_weights(make_settings(tmp_path, model=TAG_MODEL, pretrained=TAG))

    (snapshot / (filename or "open_clip_pytorch_model.bin")).unlink()
    with pytest.raises(StartupError, match="downloads are off"):
        check_weights(make_settings(tmp_path, model=TAG_MODEL, pretrained=TAG))


def test_unknown_tags_and_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as unknown:
        check_weights(make_settings(tmp_path, model=TAG_MODEL, pretrained="laion9z_nope"))
    assert "no pretrained tag 'laion9z_nope' for model 'ViT-B-32'" in str(unknown.value)
    assert TAG in str(unknown.value)  # the tags it does have
    missing = tmp_path / "absent" / "vit.safetensors"
    with pytest.raises(StartupError, match="no such file"):
        check_weights(make_settings(tmp_path, model=TAG_MODEL, pretrained=str(missing)))
    present = tmp_path / "vit.safetensors"
    present.write_bytes(b"x")
    check_weights(make_settings(tmp_path, model=TAG_MODEL, pretrained=str(present)))
    check_weights(make_settings(tmp_path))  # the bundled model: nothing to fetch
