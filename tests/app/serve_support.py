"""`fusion-search serve` in a subprocess, as a user starts it, for tests that need real HTTP."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
from api_support import cli_command, subprocess_env
from http_checks import free_port

# Generous: start-up imports torch on cores shared with other work.
START_TIMEOUT_S = 300


class ServeProcess:
    """One `fusion-search serve` on a free port over ``root / "data"``, logging to a file."""

    def __init__(self, root: Path, *args: str, host: str = "127.0.0.1", **env: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        environ = subprocess_env(FUSION_DATA_DIR=str(root / "data"), **env)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cli_command(), "serve", "--host", host, "--port", str(self.port),
                 "--log-level", "warning", *args],
                cwd=root, env=environ, stdout=out, stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Return once /ready answers 200; raise with the log if it exits or never does."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n"
                                     f"{self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready after {START_TIMEOUT_S}s:\n"
                             f"{self.output()[-3000:]}")

    def wait_exit(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
