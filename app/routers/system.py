"""Liveness, readiness, metrics and service info."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from models.precision import cpu_info

from ..deps import ServiceDep, SettingsDep
from ..schemas import CpuOut, Health, Info

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health, summary="The process is alive")
def health() -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Health, summary="Model and index are loaded",
            responses={503: {"model": Health, "description": "still loading"}})
def ready(request: Request) -> JSONResponse:
    ok = getattr(request.app.state, "service", None) is not None
    return JSONResponse({"status": "ready" if ok else "loading"}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    service = getattr(request.app.state, "service", None)
    stats = service.store.stats() if service is not None else None
    body = request.app.state.metrics.render(stats)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


info_router = APIRouter(tags=["system"])


@info_router.get("/info", response_model=Info, summary="Model, index and counts")
def info(service: ServiceDep, settings: SettingsDep) -> Info:
    m = service.model.info()
    s = service.store.stats()
    return Info(
        model=str(m["model"]), dim=int(m["dim"]), trained=bool(m["trained"]),
        has_fusion=bool(m["has_fusion"]), fusion=str(m["fusion"]),
        has_ask=bool(m.get("has_ask", False)), has_describe=bool(m.get("has_describe", False)),
        precision=str(m["precision"]), precision_reason=str(m["precision_reason"]),
        device=str(m["device"]), runtime=str(m.get("runtime", "torch")),
        runtime_parts={str(k): str(v) for k, v in m.get("runtime_parts", {}).items()},
        runtime_reason=str(m.get("runtime_reason", "")), threads=int(m.get("threads", 0)),
        cpu=CpuOut(**cpu_info().as_dict()),
        index=str(s["factory"]), items=int(s["count"]),
        vectors=int(s["vectors"]), rerank_depth=service.rerank_depth,
        auth={"writes": settings.api_key is not None,
              "reads": settings.api_key is not None and settings.protect_reads},
        limits={"max_upload_bytes": int(settings.max_upload_bytes),
                "max_request_bytes": int(settings.max_request_bytes),
                "max_files_per_request": settings.max_files_per_request,
                "max_pixels": settings.max_pixels},
    )
