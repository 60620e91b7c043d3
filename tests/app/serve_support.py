"""`fusion-search serve` in a subprocess, as a user starts it, for tests that need real HTTP."""

from __future__ import annotations

import subprocess
from pathlib import Path

from api_support import START_TIMEOUT_S, cli_command, subprocess_env
from http_checks import NotReady, free_port, terminate, wait_ready


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
        try:
            wait_ready(self.proc, self.url, START_TIMEOUT_S)
        except NotReady as exc:
            raise AssertionError(f"{exc}:\n{self.output()[-3000:]}") from None

    def wait_exit(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        terminate(self.proc, grace=30)
