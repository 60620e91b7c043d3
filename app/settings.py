"""Typed settings from the environment (prefix FUSION_), built in the lifespan, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can set; invalid values fail at start with a clear message."""

    model_config = SettingsConfigDict(env_prefix="FUSION_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    model: str = "fusion-tiny"
    pretrained: str | None = None
    fusion_weights: str | None = None
    precision: str = Field("auto", pattern="^(auto|fp32|bf16)$")
    # auto | cpu | cuda | cuda:N; checked against the machine (models.device) when settings load
    device: str = "auto"
    # where the encoders and match head run (models.runtimes): torch, or graphs exported to ONNX
    # on ONNX Runtime or OpenVINO; auto probes this CPU once and keeps a runtime >= 1.3x torch
    runtime: str = Field("torch", pattern="^(auto|torch|onnxruntime|openvino)$")
    # exported graphs and auto's verdicts, by weights hash (default ~/.cache/fusion-search/runtimes)
    runtime_cache: Path | None = None
    torch_threads: int = Field(0, ge=0, le=256)
    max_upload_bytes: ByteSize = ByteSize(25 * 1024 * 1024)
    max_request_bytes: ByteSize = ByteSize(100 * 1024 * 1024)
    max_files_per_request: int = Field(64, ge=1, le=1000)
    max_pixels: int = Field(40_000_000, ge=1)
    api_key: SecretStr | None = None
    protect_reads: bool = False
    # `fusion-search serve` refuses a non-loopback address while writes need no key (app.startup)
    allow_open_writes: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rerank_depth: int = Field(20, ge=1, le=1000)
    text_batch_max: int = Field(16, ge=1, le=256)
    index_type: str = "auto"
    memory_budget: ByteSize = ByteSize(2 * 1024**3)
    snapshot_every: int = Field(1000, ge=1)
    # seconds between looks at the catalog's change log for other processes' writes (serve
    # --workers N, an ingest beside a server): the most another process's upload waits to show
    follow_interval: float = Field(0.2, gt=0, le=60)
    # the catalog in PostgreSQL (postgresql://user@host:port/db) instead of the data dir's SQLite
    # file: replicas on several machines share it (index.catalog_factory; needs the postgres extra)
    database_url: SecretStr | None = None
    # the content-addressed image files (default: files/ inside the data dir); replicas share it
    files_dir: Path | None = None
    demo: bool = False
    demo_count: int = Field(300, ge=0, le=100_000)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("device")
    @classmethod
    def _device_exists(cls, v: str) -> str:
        from models.device import DeviceError, resolve_device

        try:
            return resolve_device(v)
        except DeviceError as exc:  # a ValueError becomes pydantic's clear start-up message
            raise ValueError(f"FUSION_DEVICE: {exc}") from exc

    @field_validator("database_url", mode="before")
    @classmethod
    def _postgres_url(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        if isinstance(v, str) and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("FUSION_DATABASE_URL must be a postgresql://user@host:port/db URL")
        return v

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v
