"""/api/v1/ask and /api/v1/describe, by stored image id (JSON) or uploaded file (/upload)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from models import DecodedImage

from ..deps import ReadAuth, ServiceDep, SettingsDep
from ..errors import ERROR_RESPONSES, ErrorResponse
from ..schemas import (
    MAX_QUESTION_CHARS,
    TEXT_PATTERN,
    Alternative,
    AskRequest,
    AskResponse,
    DescribeRequest,
    DescribeResponse,
)
from ..service import SearchService
from ..settings import Settings
from .bodies import json_body, read_body, validate_body

NOT_AVAILABLE = {"model": ErrorResponse,
                 "description": "The model has no trained head for this (code not_available); "
                                "the message says how to train one"}
router = APIRouter(tags=["answers"], responses={**ERROR_RESPONSES, 409: NOT_AVAILABLE},
                   dependencies=[ReadAuth])


def _upload_body(title: str, question: bool) -> dict[str, Any]:
    props: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
    required = ["file"]
    if question:
        props["question"] = {"type": "string", "minLength": 1, "maxLength": MAX_QUESTION_CHARS,
                             "pattern": TEXT_PATTERN}
        required.append("question")
    schema = {"title": title, "type": "object", "properties": props, "required": required,
              "additionalProperties": False}
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": schema}}}}


async def _image_or_id(request: Request, service: SearchService, settings: Settings,
                       form_only: bool, schema: type[AskRequest] | type[DescribeRequest],
                       ) -> tuple[Any, DecodedImage | None]:
    """The validated request and, for an upload, the decoded image (its image_id unused)."""
    fields, upload = await read_body(request, settings, form_only)
    if upload is not None:
        fields.setdefault("image_id", 1)  # validated separately from the file
    body = validate_body(schema, fields)
    if upload is None:
        return body, None
    return body, await run_in_threadpool(service.decode, upload.data)


async def _ask(request: Request, service: SearchService, settings: Settings,
               form_only: bool) -> AskResponse:
    body, image = await _image_or_id(request, service, settings, form_only, AskRequest)
    image_id = None if image is not None else body.image_id
    out = await run_in_threadpool(service.ask, image, image_id, body.question)
    grid = out["grid"]
    return AskResponse(
        image_id=image_id, question=body.question, answer=out["answer"],
        probability=out["probability"],
        alternatives=[Alternative(**a) for a in out["alternatives"]],
        grid=grid, rows=len(grid), cols=len(grid[0]) if grid else 0,
    )


async def _describe(request: Request, service: SearchService, settings: Settings,
                    form_only: bool) -> DescribeResponse:
    body, image = await _image_or_id(request, service, settings, form_only, DescribeRequest)
    image_id = None if image is not None else body.image_id
    out = await run_in_threadpool(service.describe, image, image_id)
    return DescribeResponse(image_id=image_id, caption=out["caption"],
                            probability=out["probability"])


@router.post("/ask", response_model=AskResponse, openapi_extra=json_body(AskRequest),
             summary="Ask a question about a stored image (visual question answering)")
async def ask(request: Request, service: ServiceDep, settings: SettingsDep) -> AskResponse:
    return await _ask(request, service, settings, form_only=False)


@router.post("/ask/upload", response_model=AskResponse,
             openapi_extra=_upload_body("AskUpload", question=True),
             summary="Ask a question about an uploaded image (visual question answering)")
async def ask_upload(request: Request, service: ServiceDep,
                     settings: SettingsDep) -> AskResponse:
    return await _ask(request, service, settings, form_only=True)


@router.post("/describe", response_model=DescribeResponse,
             openapi_extra=json_body(DescribeRequest),
             summary="Describe a stored image: a generated caption")
async def describe(request: Request, service: ServiceDep,
                   settings: SettingsDep) -> DescribeResponse:
    return await _describe(request, service, settings, form_only=False)


@router.post("/describe/upload", response_model=DescribeResponse,
             openapi_extra=_upload_body("DescribeUpload", question=False),
             summary="Describe an uploaded image: a generated caption")
async def describe_upload(request: Request, service: ServiceDep,
                          settings: SettingsDep) -> DescribeResponse:
    return await _describe(request, service, settings, form_only=True)
