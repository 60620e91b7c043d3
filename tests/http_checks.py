"""HTTP checks shared by the API and reliability suites (tests/ is on the import path)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Protocol


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


def missing_tool(message: str) -> None:
    """Skip for want of a tool on a developer's machine; fail in CI (``CI`` set), where every
    tool the suite needs is installed by `make test` and a skip would pass unnoticed."""
    import pytest

    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (CI is set: a missing tool fails the run)", pytrace=False)
    pytest.skip(message, allow_module_level=True)
