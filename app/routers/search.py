"""/api/v1/search/{text,image,composed}, their /upload forms, and /api/v1/explain."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from models import DecodedImage

from ..deps import ReadAuth, ServiceDep, SettingsDep
from ..errors import ERROR_RESPONSES, ApiError
from ..ranking import CutOff
from ..schemas import (
    MAX_QUERY_CHARS,
    TEXT_PATTERN,
    ComposedIdSearch,
    ExplainRequest,
    Explanation,
    Hit,
    ImageIdSearch,
    SearchResponse,
    TextHit,
    TextSearch,
    TextSearchResponse,
)
from ..service import Results, ScoredHit, SearchService
from ..settings import Settings
from .images import file_url, read_upload

router = APIRouter(tags=["search"], responses=ERROR_RESPONSES, dependencies=[ReadAuth])

M = TypeVar("M", bound=BaseModel)
Q = TypeVar("Q", ImageIdSearch, ComposedIdSearch)


def _hit(request: Request, hit: ScoredHit) -> Hit:
    item = hit.item
    return Hit(id=item.id, score=round(hit.score, 6),
               match=None if hit.match is None else round(hit.match, 6),
               caption=item.caption, tags=item.tags,
               file_url=file_url(request, item.id))


def _response(request: Request, results: Results, fusion: str) -> SearchResponse:
    return SearchResponse(
        hits=[_hit(request, h) for h in results.hits],
        took_ms=results.took_ms, reranked=results.reranked, fusion=fusion,
    )


def _text_response(request: Request, results: Results, fusion: str,
                   mode: Literal["vector", "keyword", "hybrid"]) -> TextSearchResponse:
    return TextSearchResponse(
        hits=[TextHit(**_hit(request, h).model_dump(), original_name=h.item.original_name,
                      vector_rank=h.vector_rank, keyword_rank=h.keyword_rank)
              for h in results.hits],
        took_ms=results.took_ms, reranked=results.reranked, fusion=fusion, mode=mode,
        filtered=results.filtered,
    )


def _multipart_schema(text_field: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "file": {"type": "string", "format": "binary"},
        "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
        "tags": {"type": "string", "description": "comma-separated"},
    }
    required = ["file"]
    if text_field:
        props["text"] = {"type": "string", "pattern": TEXT_PATTERN, "maxLength": MAX_QUERY_CHARS}
        required.append("text")
    else:
        props["target"] = {"type": "string", "enum": ["images", "captions"], "default": "images"}
    return {"title": "ComposedUploadSearch" if text_field else "ImageUploadSearch",
            "type": "object", "properties": props, "required": required,
            "additionalProperties": False}


# One request content type per operation: client generators (openapi-python-client, among
# others) cannot build an operation that takes JSON *or* a form. The JSON paths still accept a
# multipart upload for curl and older callers, undocumented; the /upload paths take only a form.
def _json_body(json_model: type[BaseModel]) -> dict[str, Any]:
    # Inline: a $ref would dangle, since FastAPI only lists models that routes declare.
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_model.model_json_schema()}}}}


def _form_body(text_field: bool) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": _multipart_schema(text_field)}}}}


def _validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msgs = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        raise ApiError(422, "validation_error", "; ".join(msgs)) from exc


async def _read_body(request: Request, settings: Settings,
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


def _fusion(service: Any) -> str:
    return "attention" if service.model.has_fusion else "late"


@router.post("/search/text", response_model=TextSearchResponse,
             summary="Text -> image search: vector, keyword or hybrid, with a relevance cut-off")
def search_text(request: Request, body: TextSearch, service: ServiceDep) -> TextSearchResponse:
    results = service.search_text(body.query, body.k, body.tags, body.rerank, mode=body.mode,
                                  cutoff=CutOff(body.min_match, body.min_score),
                                  keyword_syntax=body.keyword_syntax)
    return _text_response(request, results, _fusion(service), body.mode)


async def _search_by_image(
    request: Request, service: SearchService, settings: Settings, form_only: bool,
    schema: type[Q], search: Callable[[DecodedImage | None, int | None, Q], Results],
) -> SearchResponse:
    """Image and composed search: by a stored image id (JSON) or an uploaded file (form)."""
    fields, upload = await _read_body(request, settings, form_only)
    if upload is not None:
        fields.setdefault("image_id", 1)  # validated separately from the file
    q = _validate(schema, fields)
    if upload is not None:
        image = await run_in_threadpool(service.decode, upload.data)
        results = await run_in_threadpool(search, image, None, q)
    else:
        results = await run_in_threadpool(search, None, q.image_id, q)
    return _response(request, results, _fusion(service))


async def _image_search(request: Request, service: SearchService, settings: Settings,
                        form_only: bool) -> SearchResponse:
    def search(image: DecodedImage | None, image_id: int | None, q: ImageIdSearch) -> Results:
        return service.search_image(image, image_id, q.k, q.tags, q.target)

    return await _search_by_image(request, service, settings, form_only, ImageIdSearch, search)


async def _composed_search(request: Request, service: SearchService, settings: Settings,
                           form_only: bool) -> SearchResponse:
    def search(image: DecodedImage | None, image_id: int | None,
               q: ComposedIdSearch) -> Results:
        return service.search_composed(image, image_id, q.text, q.k, q.tags)

    return await _search_by_image(request, service, settings, form_only, ComposedIdSearch,
                                  search)


@router.post("/search/image", response_model=SearchResponse,
             openapi_extra=_json_body(ImageIdSearch),
             summary="Image -> image or image -> caption search, by stored image id")
async def search_image(request: Request, service: ServiceDep,
                       settings: SettingsDep) -> SearchResponse:
    return await _image_search(request, service, settings, form_only=False)


@router.post("/search/image/upload", response_model=SearchResponse,
             openapi_extra=_form_body(text_field=False),
             summary="Image -> image or image -> caption search, by an uploaded image")
async def search_image_upload(request: Request, service: ServiceDep,
                              settings: SettingsDep) -> SearchResponse:
    return await _image_search(request, service, settings, form_only=True)


@router.post("/search/composed", response_model=SearchResponse,
             openapi_extra=_json_body(ComposedIdSearch),
             summary="Stored image (by id) + modifying text -> image search")
async def search_composed(request: Request, service: ServiceDep,
                          settings: SettingsDep) -> SearchResponse:
    return await _composed_search(request, service, settings, form_only=False)


@router.post("/search/composed/upload", response_model=SearchResponse,
             openapi_extra=_form_body(text_field=True),
             summary="Uploaded image + modifying text -> image search")
async def search_composed_upload(request: Request, service: ServiceDep,
                                 settings: SettingsDep) -> SearchResponse:
    return await _composed_search(request, service, settings, form_only=True)


@router.post("/explain", response_model=Explanation,
             summary="Why this hit: attention of the text over the image's patches")
def explain(body: ExplainRequest, service: ServiceDep) -> Explanation:
    out = service.explain(body.image_id, body.text)
    return Explanation(image_id=body.image_id, text=body.text, **out)  # type: ignore[arg-type]
