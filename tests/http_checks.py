"""HTTP checks and server-process helpers shared by the API, reliability and browser suites
(tests/ is on the import path)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx


class ResponseLike(Protocol):
    """What the checks read from an answer, from TestClient or from httpx against a server."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def assert_error(resp: ResponseLike, status: int | tuple[int, ...],
                 code: str | None = None) -> dict[str, str]:
    """The answer has ``status`` (or one of them) and the body ``{"error": {"code", "message"}}``,
    nothing else."""
    wanted = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in wanted, f"{resp.status_code}: {resp.text[:500]}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message"}, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    if code is not None:
        assert error["code"] == code, body
    return error  # type: ignore[no-any-return]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_socket() -> socket.socket:
    """A socket bound to 127.0.0.1 on a port the kernel picked, listening: hand it to uvicorn
    with ``--fd`` (and ``pass_fds``) and the port is the server's from the first moment."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def start_uvicorn(env: Mapping[str, str], cwd: Path, log: Path,
                  header: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m uvicorn app.main:create_app --factory``, its output appended to ``log`` (after
    a line ``==== {header} on port N``, when given a header).

    The socket is bound here, on port 0, and handed over with ``--fd``: the port is the server's
    from the first moment, with no moment in which another process could take it. Returns the
    process and its port."""
    with listening_socket() as sock, log.open("ab") as out:  # the child holds its own copies
        port = int(sock.getsockname()[1])
        if header is not None:
            out.write(f"\n==== {header} on port {port}\n".encode())
            out.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
             "--fd", str(sock.fileno()), "--log-level", "warning"],
            cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
        )
    return proc, port


class NotReady(Exception):
    """A server process exited, or its /ready did not answer 200 in time."""


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    """Return once ``{url}/ready`` answers 200.

    Raises NotReady when the process exits first or ``timeout`` seconds pass; the process is left
    as it is, for the caller to stop and to read its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NotReady(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise NotReady(f"server not ready after {timeout}s")


def terminate(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL when the process has not exited within ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def missing_tool(message: str) -> None:
    """Skip for want of a tool on a developer's machine; fail in CI (``CI`` set), where every
    tool the suite needs is installed by `make test` and a skip would pass unnoticed."""
    import pytest

    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (CI is set: a missing tool fails the run)", pytrace=False)
    pytest.skip(message, allow_module_level=True)
