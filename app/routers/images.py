"""/api/v1/images: upload, list, get, file, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile as StarletteUpload

from index import Item
from index.neardup import Signature

from ..deps import ReadAuth, ServiceDep, SettingsDep, WriteAuth
from ..errors import ERROR_RESPONSES, ApiError, ErrorResponse
from ..schemas import (
    MAX_ID,
    DuplicateGroup,
    DuplicateGroupPage,
    DuplicatesResponse,
    ItemOut,
    ItemPage,
    NearDuplicate,
    UploadedItem,
    UploadResponse,
)
from ..service import FileIn, SearchService

router = APIRouter(prefix="/images", tags=["images"], responses=ERROR_RESPONSES)
duplicates_router = APIRouter(tags=["images"], responses=ERROR_RESPONSES)

MAX_CAPTION_CHARS = 2000
MAX_TAGS = 50
MAX_TAG_CHARS = 64
# A path id over MAX_ID must be a 422, not an OverflowError (500).
ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]


_SENTINEL_ID = 918273645


def file_url(request: Request, item_id: int) -> str:
    """The path of an item's file, as ``request.url_for("image_file", ...).path`` gives it.

    Starlette's ``url_for`` walks every route (raising and catching NoMatchFound in each
    router) on each call; for a page of search hits that was a fifth of the request's time
    under the GIL. The path is resolved once per app and root path, then formatted.
    """
    state = request.app.state
    cache: dict[str, str] | None = getattr(state, "file_url_templates", None)
    if cache is None:
        cache = state.file_url_templates = {}
    root = str(request.scope.get("root_path", ""))
    template = cache.get(root)
    if template is None:
        path = str(request.url_for("image_file", item_id=_SENTINEL_ID).path)
        template = cache[root] = path.replace(str(_SENTINEL_ID), "{}")
    return template.format(item_id)


def item_out(request: Request, item: Item, duplicate: bool = False) -> ItemOut:
    return ItemOut(
        id=item.id, caption=item.caption, tags=item.tags,
        file_url=file_url(request, item.id),
        content_type=item.content_type, width=item.width, height=item.height, bytes=item.bytes,
        sha256=item.sha256, original_name=item.original_name, created_at=item.created_at,
        duplicate=duplicate,
    )


def near_out(request: Request, item: Item, sim: float) -> NearDuplicate:
    return NearDuplicate(id=item.id, similarity=round(sim, 4), caption=item.caption,
                         original_name=item.original_name, file_url=file_url(request, item.id))


def _uploaded(service: SearchService, results: list[tuple[Item, bool]]
              ) -> list[tuple[Item, bool, list[tuple[Item, float]]]]:
    out = []
    cache: dict[int, Signature] = {}
    for item, dup in results:
        near = [] if dup else service.duplicates.of(item.id, cache)
        out.append((item, dup, near))
    return out


def parse_tags(raw: list[str] | None) -> list[str]:
    """Tags from repeated fields and/or comma-separated values; trimmed, lower-cased, unique."""
    tags: list[str] = []
    for value in raw or []:
        for tag in value.replace("\x00", "").split(","):
            tag = tag.strip().lower()
            if tag and tag not in tags:
                if len(tag) > MAX_TAG_CHARS:
                    raise ApiError(422, "validation_error",
                                   f"tags are at most {MAX_TAG_CHARS} characters")
                tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise ApiError(422, "validation_error", f"at most {MAX_TAGS} tags")
    return tags


def clean_caption(caption: str | None) -> str | None:
    if caption is None:
        return None
    caption = caption.replace("\x00", " ").strip()
    if len(caption) > MAX_CAPTION_CHARS:
        raise ApiError(422, "validation_error",
                       f"caption is at most {MAX_CAPTION_CHARS} characters")
    return caption or None


async def read_upload(upload: StarletteUpload, limit: int) -> FileIn:
    """Read one part, refusing it once it passes the per-file limit."""
    if upload.size is not None and upload.size > limit:
        raise ApiError(413, "file_too_large", f"{upload.filename!r} is over the {limit}-byte limit")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "file_too_large", f"{upload.filename!r} is over the {limit}-byte limit")
    return FileIn(data=data, filename=upload.filename)


# Added to the generated form schema: at least one image, and no nulls (multipart has none).
_UPLOAD_FORM = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "anyOf": [{"required": ["files"]}, {"required": ["file"]}],
    "properties": {
        "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}},
        "file": {"type": "string", "format": "binary"},
        "caption": {"type": "string", "maxLength": MAX_CAPTION_CHARS},
    },
}}}}}


@router.post("", status_code=201, response_model=UploadResponse, dependencies=[WriteAuth],
             responses={507: {"model": ErrorResponse, "description": "Not enough storage"}},
             openapi_extra=_UPLOAD_FORM,
             summary="Upload one or more images with an optional caption and tags")
async def upload_images(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile] | None, File(description="one or more images")] = None,
    file: Annotated[UploadFile | None, File(description="a single image")] = None,
    caption: Annotated[str | None, Form()] = None,
    tags: Annotated[list[str] | None, Form(description="repeat or comma-separate")] = None,
) -> UploadResponse:
    uploads = list(files or []) + ([file] if file is not None else [])
    if not uploads:
        raise ApiError(400, "no_file", "send at least one image as multipart field 'files'")
    if len(uploads) > settings.max_files_per_request:
        raise ApiError(413, "too_many_files",
                       f"at most {settings.max_files_per_request} files per request")
    limit = int(settings.max_upload_bytes)
    received = [await read_upload(u, limit) for u in uploads]
    results = await run_in_threadpool(
        service.upload, received, clean_caption(caption), parse_tags(tags)
    )
    checked = await run_in_threadpool(_uploaded, service, results)
    return UploadResponse(items=[
        UploadedItem(**item_out(request, it, dup).model_dump(),
                     near_duplicates=[near_out(request, d, s) for d, s in near])
        for it, dup, near in checked])


@router.get("", response_model=ItemPage, dependencies=[ReadAuth], summary="List stored images")
def list_images(
    request: Request,
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    tag: Annotated[str | None, Query(max_length=MAX_TAG_CHARS)] = None,
) -> ItemPage:
    clean = tag.strip().lower() if tag else None
    items, total = service.store.list(offset=offset, limit=limit, tag=clean or None)
    return ItemPage(items=[item_out(request, it) for it in items], total=total, offset=offset,
                    limit=limit)


@router.get("/{item_id}", response_model=ItemOut, dependencies=[ReadAuth],
            summary="One image's metadata")
def get_image(request: Request, service: ServiceDep, item_id: ItemId) -> ItemOut:
    return item_out(request, service.store.get(item_id))


@router.get("/{item_id}/duplicates", response_model=DuplicatesResponse,
            dependencies=[ReadAuth],
            summary="Stored near duplicates of an image (re-encoded, resized, cropped, brightened)")
def image_duplicates(request: Request, service: ServiceDep, item_id: ItemId
                     ) -> DuplicatesResponse:
    near = service.duplicates.of(item_id)
    return DuplicatesResponse(id=item_id, duplicates=[near_out(request, d, s) for d, s in near])


@duplicates_router.get("/duplicates", response_model=DuplicateGroupPage,
                       dependencies=[ReadAuth],
                       summary="Groups of near duplicates, paged over the collection")
def duplicate_groups(
    request: Request,
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DuplicateGroupPage:
    groups, total = service.duplicates.groups(offset, limit)
    return DuplicateGroupPage(
        groups=[DuplicateGroup(item=item_out(request, it),
                               duplicates=[near_out(request, d, s) for d, s in near])
                for it, near in groups],
        total=total, offset=offset, limit=limit)


@router.get("/{item_id}/file", name="image_file", dependencies=[ReadAuth],
            response_class=FileResponse, summary="The stored image file",
            responses={200: {"content": {"image/*": {}}, "description": "the image bytes"}})
def image_file(service: ServiceDep, item_id: ItemId) -> FileResponse:
    path, content_type = service.store.file_path(item_id)
    return FileResponse(
        path, media_type=content_type,
        headers={"X-Content-Type-Options": "nosniff",
                 "Cache-Control": "private, max-age=31536000, immutable",
                 "Content-Security-Policy": "default-src 'none'; sandbox"},
    )


@router.delete("/{item_id}", response_model=ItemOut, dependencies=[WriteAuth],
               summary="Delete an image (row, vector and file)")
def delete_image(request: Request, service: ServiceDep, item_id: ItemId) -> ItemOut:
    item = service.delete(item_id)
    return item_out(request, item)
