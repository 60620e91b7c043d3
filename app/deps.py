"""Dependencies shared by the routers, as Annotated aliases.

Every dependency here is ``async def``: FastAPI runs a plain ``def`` dependency in the thread
pool, one hand-off per dependency per request (with the GIL to pass back and forth), and these
only read app state and compare a header.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from .errors import ApiError
from .service import SearchService
from .settings import Settings

# Two names for the one X-API-Key header, so the OpenAPI schema can tell writes from reads and
# main.py can document the key only where the settings enforce it.
WRITE_SCHEME, READ_SCHEME = "WriteKey", "ReadKey"
_write_key = APIKeyHeader(name="X-API-Key", scheme_name=WRITE_SCHEME, auto_error=False)
_read_key = APIKeyHeader(name="X-API-Key", scheme_name=READ_SCHEME, auto_error=False)


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_settings(request: Request) -> Settings:
    return _settings(request)


async def get_service(request: Request) -> SearchService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "not_ready", "the model and index are still loading")
    return service  # type: ignore[no-any-return]


def _check_key(settings: Settings, given: str | None) -> None:
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required")


async def require_write(
    request: Request, key: Annotated[str | None, Security(_write_key)]
) -> None:
    """Writes need the API key whenever one is configured."""
    _check_key(_settings(request), key)


async def require_read(
    request: Request, key: Annotated[str | None, Security(_read_key)]
) -> None:
    """Reads need the API key only with FUSION_PROTECT_READS=true."""
    settings = _settings(request)
    if settings.protect_reads:
        _check_key(settings, key)


ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
WriteAuth = Depends(require_write)
ReadAuth = Depends(require_read)
