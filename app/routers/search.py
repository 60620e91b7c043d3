"""/api/v1/search/{text,image,composed}, their /upload forms, and /api/v1/explain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from models import DecodedImage

from ..deps import ReadAuth, ServiceDep, SettingsDep
from ..errors import ERROR_RESPONSES
from ..ranking import SHOWN_DECIMALS, CutOff
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
from .bodies import json_body, read_body, validate_body
from .images import file_url

router = APIRouter(tags=["search"], responses=ERROR_RESPONSES, dependencies=[ReadAuth])

Q = TypeVar("Q", ImageIdSearch, ComposedIdSearch)


def _hit_fields(request: Request, hit: ScoredHit) -> dict[str, Any]:
    item = hit.item
    return {"id": item.id, "score": round(hit.score, SHOWN_DECIMALS),
            "match": None if hit.match is None else round(hit.match, SHOWN_DECIMALS),
            "caption": item.caption, "tags": item.tags, "file_url": file_url(request, item.id)}


def _response(request: Request, results: Results, fusion: str) -> SearchResponse:
    return SearchResponse(
        hits=[Hit(**_hit_fields(request, h)) for h in results.hits],
        took_ms=results.took_ms, reranked=results.reranked, fusion=fusion,
    )


def _text_response(request: Request, results: Results, fusion: str,
                   mode: Literal["vector", "keyword", "hybrid"]) -> TextSearchResponse:
    return TextSearchResponse(
        hits=[TextHit(**_hit_fields(request, h), original_name=h.item.original_name,
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


def _form_body(text_field: bool) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": _multipart_schema(text_field)}}}}


def _fusion(service: Any) -> str:
    return "attention" if service.model.has_fusion else "late"


@router.post("/search/text", response_model=TextSearchResponse,
             summary="Text -> image search: vector, keyword or hybrid, with a relevance cut-off")
async def search_text(request: Request, body: TextSearch, service: ServiceDep
                      ) -> TextSearchResponse:
    # async, with the search itself in the thread pool: a plain ``def`` endpoint would also
    # validate its response there, two hand-offs per request instead of one
    results = await run_in_threadpool(
        service.search_text, body.query, body.k, body.tags, body.rerank, mode=body.mode,
        cutoff=CutOff(body.min_match, body.min_score), keyword_syntax=body.keyword_syntax)
    return _text_response(request, results, _fusion(service), body.mode)


async def _search_by_image(
    request: Request, service: SearchService, settings: Settings, form_only: bool,
    schema: type[Q], search: Callable[[DecodedImage | None, int | None, Q], Results],
) -> SearchResponse:
    """Image and composed search: by a stored image id (JSON) or an uploaded file (form)."""
    fields, upload = await read_body(request, settings, form_only)
    if upload is not None:
        fields.setdefault("image_id", 1)  # validated separately from the file
    q = validate_body(schema, fields)
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
             openapi_extra=json_body(ImageIdSearch),
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
             openapi_extra=json_body(ComposedIdSearch),
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
async def explain(body: ExplainRequest, service: ServiceDep) -> Explanation:
    out = await run_in_threadpool(service.explain, body.image_id, body.text)
    return Explanation(image_id=body.image_id, text=body.text, **out)  # type: ignore[arg-type]
