"""Helpers for the reliability tests: a real uvicorn process, scenes, error-shape checks."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from http_checks import NotReady, start_uvicorn, wait_ready

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
        """Start the process (on a port of its own from the first moment: see start_uvicorn)
        and wait until /ready answers 200.

        Raises RuntimeError (with the log's tail) when it exits or never gets ready.
        """
        assert self.proc is None, "already running"
        self.starts += 1
        # cwd outside the repo: no .env file is read, the app is found as an installed package.
        self.proc, self.port = start_uvicorn(self._env(), self.data_dir.parent, self.log_path,
                                             header=f"start {self.starts}")
        try:
            wait_ready(self.proc, self.url, timeout)
        except NotReady as exc:
            self.kill()
            raise RuntimeError(f"{exc} during start:\n{self.log_tail()}") from None

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


