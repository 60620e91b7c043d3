"""The HTTP benchmark's server: a uvicorn subprocess on a free port, started and torn down
around a benchmark, and its RSS and CPU time read from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MODEL = "fusion-tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> dict[str, int]:
    """Current and peak resident set size of a process (VmRSS / VmHWM)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return {"rss": out.get("VmRSS", 0), "peak": out.get("VmHWM", 0)}


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a uvicorn supervisor's workers)."""
    try:
        return [int(c) for c in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_ticks(pid: int) -> float:
    """CPU seconds (user + system) a process and its live children have used."""
    total = 0.0
    for p in (pid, *children(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def serving_workers(pid: int, data_dir: Path) -> int:
    """How many worker processes under ``pid`` hold ``data_dir``'s store open (its write
    lock file: their model loaded before it)."""
    lock = str(data_dir / ".write.lock")
    n = 0
    for child in children(pid):
        try:
            n += lock in {os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()}
        except OSError:  # exited meanwhile
            continue
    return n


def wait_for_workers(proc: subprocess.Popen[bytes], data_dir: Path, workers: int,
                     timeout: float = 600) -> None:
    """Until ``workers`` processes under the supervisor ``proc`` have their store open (one
    process serves alone: nothing to wait for). Raises RuntimeError when the supervisor exits
    or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while workers > 1 and serving_workers(proc.pid, data_dir) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{workers} workers did not all start; see its log")
        time.sleep(0.2)


@contextmanager
def server(data_dir: Path, env: dict[str, str], log: Path, workers: int = 1
           ) -> Iterator[tuple[str, int]]:
    """A uvicorn process serving the app on a free port (``workers`` > 1: a supervisor and
    that many worker processes, yielded once every one has its store open): yields (base url,
    pid)."""
    port = free_port()
    full_env = {**os.environ, "FUSION_DATA_DIR": str(data_dir), "FUSION_MODEL": MODEL,
                "HF_HUB_OFFLINE": "1", **env}
    cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
           "--no-access-log"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[1])
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base, proc, timeout=600)
            wait_for_workers(proc, data_dir, workers)
        except (RuntimeError, TimeoutError):
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see its log")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError("server not ready")
