"""FastAPI app factory: settings, middleware and routers here; heavy objects in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from index import Store
from models import load_model

from . import docs, errors
from .demo import seed_demo
from .deps import READ_SCHEME, WRITE_SCHEME
from .limits import BodyLimit
from .metrics import Metrics, MetricsMiddleware
from .routers import answers, images, search, system
from .service import SearchService
from .settings import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def build_service(settings: Settings) -> SearchService:
    """Load the model, open the store (replaying or rebuilding its index), seed the demo."""
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    model = load_model(settings.model, settings.pretrained, fusion=settings.fusion_weights,
                       precision=settings.precision, device=settings.device,
                       runtime=settings.runtime, cache_dir=settings.runtime_cache)
    store = Store.open(settings.data_dir, dim=model.embed_dim, model_name=model.name,
                       factory=settings.index_type, memory_budget=int(settings.memory_budget),
                       snapshot_every=settings.snapshot_every, shared=True,
                       follow_interval=settings.follow_interval,
                       database_url=(settings.database_url.get_secret_value()
                                     if settings.database_url else None),
                       files_dir=settings.files_dir)
    service = SearchService(model, store, rerank_depth=settings.rerank_depth,
                            text_batch=settings.text_batch_max,
                            max_pixels=settings.max_pixels)
    if settings.demo and settings.demo_count and store.stats()["count"] == 0:
        seed_demo(service, settings.demo_count)
    return service


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    service = await anyio.to_thread.run_sync(build_service, settings)
    app.state.service = service
    log.info("ready: %s", service.info())
    try:
        yield
    finally:
        app.state.service = None
        await anyio.to_thread.run_sync(service.store.close)


def _document_auth(app: FastAPI, settings: Settings) -> None:
    """Make the OpenAPI schema ask for X-API-Key exactly where these settings enforce it."""
    generate = app.openapi
    enforced = {WRITE_SCHEME: settings.api_key is not None,
                READ_SCHEME: settings.api_key is not None and settings.protect_reads}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    needs = [name for req in op.pop("security", []) for name in req]
                    if any(enforced.get(name) for name in needs):
                        op["security"] = [{"APIKeyHeader": []}]
            components = schema.get("components", {})
            components.pop("securitySchemes", None)
            if settings.api_key is not None:
                components["securitySchemes"] = {"APIKeyHeader": {
                    "type": "apiKey", "in": "header", "name": "X-API-Key"}}
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _binary_files(node: Any) -> None:
    """File fields as ``format: binary`` everywhere in the schema, in place.

    Pydantic 2 describes an UploadFile as ``contentMediaType: application/octet-stream`` (JSON
    Schema 2020-12); client generators (openapi-python-client, openapi-generator) look for the
    OpenAPI ``format: binary`` and otherwise type the field as text, so uploads fail.
    """
    if isinstance(node, dict):
        if node.get("type") == "string" and "contentMediaType" in node:
            del node["contentMediaType"]
            node["format"] = "binary"
        for value in node.values():
            _binary_files(value)
    elif isinstance(node, list):
        for value in node:
            _binary_files(value)


def _hoist_bodies(schema: dict[str, Any]) -> None:
    """Inline request-body schemas with a title become components named by it, in place.

    Routes that read their body themselves describe it inline (openapi_extra); as components
    they give generated clients classes named ImageIdSearch, not SearchImageImageIdSearch.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            for media in op.get("requestBody", {}).get("content", {}).values():
                body = media.get("schema", {})
                title = body.get("title")
                if title and "$ref" not in body and components.get(title, body) == body:
                    components[title] = body
                    media["schema"] = {"$ref": f"#/components/schemas/{title}"}


def _document_files(app: FastAPI) -> None:
    """Spec post-processing for client generators: binary file fields, named bodies."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _hoist_bodies(schema)
            _binary_files(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings come from the environment (FUSION_*) unless given."""
    settings = settings or Settings()
    app = FastAPI(
        title="fusion-search",
        version="0.1.0",
        description="Image-text retrieval: text->image, image->image, image->text and composed "
        "search over a CLIP-style dual encoder, re-ranked by attention fusion.",
        lifespan=lifespan,
        docs_url=None,  # docs.install serves both pages from local files, never a CDN
        redoc_url=None,
        # operation ids are the route names (search_text, upload_images...): the function
        # names of a generated client, instead of FastAPI's name_path_method
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    app.state.service = None
    app.state.metrics = Metrics()
    errors.install(app)
    api = APIRouter(prefix="/api/v1")
    api.include_router(images.router)
    api.include_router(images.duplicates_router)
    api.include_router(search.router)
    api.include_router(answers.router)
    api.include_router(system.info_router)
    app.include_router(api)
    app.include_router(system.router)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Content-Type", "X-API-Key"])
    app.add_middleware(BodyLimit, limit=int(settings.max_request_bytes))
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    _document_files(app)
    _document_auth(app, settings)
    docs.install(app)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        def page() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html",
                                headers={"X-Content-Type-Options": "nosniff"})

    return app
