"""Request bodies shared by the routers that take JSON or an uploaded image: the OpenAPI body of
a JSON operation, validation into a model with a 422 naming the fields, and reading JSON or a
multipart form (with its file) from one request."""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from ..errors import ApiError
from ..settings import Settings
from .images import read_upload

M = TypeVar("M", bound=BaseModel)


# One request content type per operation: client generators (openapi-python-client, among
# others) cannot build an operation that takes JSON *or* a form. The JSON paths still accept a
# multipart upload for curl and older callers, undocumented; the /upload paths take only a form.
def json_body(json_model: type[BaseModel]) -> dict[str, Any]:
    # Inline: a $ref would dangle, since FastAPI only lists models that routes declare.
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_model.model_json_schema()}}}}


def validate_body(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msgs = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        raise ApiError(422, "validation_error", "; ".join(msgs)) from exc


async def read_body(request: Request, settings: Settings,
                     form_only: bool = False) -> tuple[dict[str, Any], Any]:
    """JSON body, or multipart fields plus the uploaded file (decoded later)."""
    ctype = request.headers.get("content-type", "")
    if form_only and not ctype.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type",
                       f"send multipart/form-data with the image as field 'file' (or JSON with "
                       f"image_id to {request.url.path.removesuffix('/upload')})")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "no_file", "send the query image as multipart field 'file' "
                                           "or JSON with image_id")
        fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
        if "tags" in fields:
            fields["tags"] = [t.strip() for t in fields["tags"].split(",") if t.strip()]
        if "k" in fields:  # form fields are text; the models take only JSON numbers for k
            with contextlib.suppress(ValueError):
                fields["k"] = int(fields["k"].strip())
        data = await read_upload(upload, int(settings.max_upload_bytes))
        return fields, data
    if ctype.startswith("application/json") or not ctype:
        try:
            body = await request.json()
        except ValueError as exc:
            raise ApiError(400, "bad_json", "the body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise ApiError(422, "validation_error", "the JSON body must be an object")
        return body, None
    raise ApiError(415, "unsupported_media_type",
                   "send application/json or multipart/form-data")
