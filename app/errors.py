"""The one place where domain errors become HTTP responses: {"error": {"code", "message"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from index import (
    BadQuery,
    CatalogUnavailable,
    DataDirLocked,
    DimensionMismatch,
    DuplicateContent,
    IndexNotReady,
    ItemNotFound,
    ModelMismatch,
    StorageFull,
    StoreError,
    TokensUnavailable,
)
from models import BadImage, FusionUnavailable, ModelError
from models.errors import HeadNotAvailable

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: ErrorBody


class ApiError(Exception):
    """An error raised by the HTTP layer itself (bad request shape, auth, limits)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class BodyTooLarge(StarletteHTTPException):
    """Raised from inside body parsing; an HTTPException so parsers re-raise it unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the {limit}-byte limit")


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in {
        400: "Bad request (undecodable image, empty query, malformed body)",
        401: "Missing or wrong X-API-Key",
        404: "Unknown id",
        413: "Body, file or image dimensions over the limit",
        415: "File type outside the allow-list",
        422: "Request fields failed validation",
    }.items()
}

_STATUS_BY_TYPE: list[tuple[type[Exception], int, str]] = [
    (ItemNotFound, 404, "not_found"),
    (BadQuery, 400, "bad_query"),
    (StorageFull, 507, "insufficient_storage"),
    (IndexNotReady, 503, "not_ready"),
    (DimensionMismatch, 409, "dimension_mismatch"),
    (ModelMismatch, 409, "model_mismatch"),
    (TokensUnavailable, 409, "tokens_unavailable"),
    (DataDirLocked, 503, "data_dir_locked"),
    (CatalogUnavailable, 503, "database_unavailable"),
    (DuplicateContent, 409, "duplicate"),
    (FusionUnavailable, 409, "fusion_unavailable"),
    (HeadNotAvailable, 409, "not_available"),
]


def _domain(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, BadImage):
        return error_response(exc.status, exc.code, str(exc))
    for typ, status, code in _STATUS_BY_TYPE:
        if isinstance(exc, typ):
            response = error_response(status, code, str(exc))
            if isinstance(exc, CatalogUnavailable):  # the database is restarting: come back
                response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
    log.exception("unhandled domain error", exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
             400: "bad_request", 401: "unauthorized", 415: "unsupported_media_type"}
    code = codes.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:
        response.headers["Allow"] = _allowed_methods(request, response.headers.get("Allow"))
    return response


def _allowed_methods(request: Request, given: str | None) -> str:
    """Every method the requested path supports (Starlette's 405 names only one route's)."""
    methods = {m.strip().upper() for m in (given or "").split(",") if m.strip()}
    parts = request.scope["path"].split("/")
    for template, ops in request.app.openapi().get("paths", {}).items():
        pattern = template.split("/")
        if len(pattern) == len(parts) and all(
            t == p or (t.startswith("{") and t.endswith("}") and p)
            for t, p in zip(pattern, parts, strict=True)
        ):
            methods.update(m.upper() for m in ops)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return error_response(422, "validation_error", "; ".join(parts) or "invalid request")


def install(app: FastAPI) -> None:
    """Register every mapping on the app."""
    app.add_exception_handler(ApiError, _domain)
    app.add_exception_handler(ModelError, _domain)
    app.add_exception_handler(StoreError, _domain)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
