"""Helpers for the reliability tests: a real uvicorn process, scenes, error-shape checks."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx

from app.settings import Settings
from models import synthetic as syn

API = "/api/v1"
# Every FUSION_* variable the service reads; the tests' own knobs (FUSION_SOAK_SECONDS,
# FUSION_RELIABILITY_REPORT) are not settings and stay visible.
SETTING_VARS = frozenset(f"FUSION_{name.upper()}" for name in Settings.model_fields)


def record(section: str, data: dict[str, Any]) -> None:
    """Merge ``data`` under ``section`` into the JSON report named by FUSION_RELIABILITY_REPORT
    (nothing when it is unset); docs/operations.md quotes the last recorded run."""
    target = os.environ.get("FUSION_RELIABILITY_REPORT")
    if not target:
        return
    path = Path(target)
    report: dict[str, Any] = {}
    if path.is_file():
        try:
            report = json.loads(path.read_text())
        except ValueError:
            report = {}
    report[section] = data
    report["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an in-process app: no .env file, this data dir, one torch thread."""
    overrides.setdefault("torch_threads", 1)
    return Settings(_env_file=None, data_dir=data_dir, **overrides)  # type: ignore[call-arg]


@lru_cache(maxsize=1024)
def scene(i: int, split: str = "test") -> tuple[bytes, str]:
    """The ``i``-th synthetic 64x64 scene as PNG bytes, with a caption true of it."""
    example = syn.example(split, i, size=64)
    buf = io.BytesIO()
    example.image.save(buf, format="PNG")
    return buf.getvalue(), example.caption


class LiveServer:
    """``python -m uvicorn app.main:create_app --factory`` on a data dir, as an operator runs it.

    Start, SIGKILL and restart it as often as needed; the data dir stays.
    """

    def __init__(self, data_dir: Path, log_path: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
        env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   FUSION_DATA_DIR=str(self.data_dir), FUSION_TORCH_THREADS="1")
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 180.0) -> None:
        """Start the process and wait until /ready answers 200.

        The socket is bound here, on port 0, and handed to uvicorn (``--fd``): the port is the
        server's from the start, with no moment in which another process could take it.

        Raises RuntimeError (with the log's tail) when it exits or never gets ready.
        """
        assert self.proc is None, "already running"
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = int(sock.getsockname()[1])
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n==== start {self.starts} on port {self.port}\n".encode())
        log.flush()
        # cwd outside the repo: no .env file is read, the app is found as an installed package.
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                 "--fd", str(sock.fileno()), "--log-level", "warning"],
                env=self._env(), cwd=self.data_dir.parent, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(sock.fileno(),),
            )
        finally:
            sock.close()  # the child holds its own copy
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"server exited with {code} during start:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no lifespan exit, no snapshot, no cleanup."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> int:
        """SIGTERM and wait for a clean shutdown; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.proc = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def memory_kb(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak) of the server process, in kB, from /proc."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


