"""Server configuration: command-line flags over ``LOGITCACHE_*`` environment variables over defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ServerSettings"]


class ServerSettings(BaseSettings):
    """Every field can be set as ``LOGITCACHE_<FIELD>`` (for example ``LOGITCACHE_AUTH_TOKEN``)."""

    model_config = SettingsConfigDict(env_prefix="LOGITCACHE_", extra="forbid")

    data_dir: Path = Field(Path("logitcache-data"), description="where the shards live (created if missing)")
    grpc: str = Field("127.0.0.1:50051", description="gRPC listen address host:port (port 0 = any free port)")
    http: str = Field("127.0.0.1:8080", description="REST API and viewer address host:port; 'off' disables it")
    tokenizer: Annotated[list[Path], NoDecode] = Field(
        [],
        description="Hugging Face tokenizer.json files, or directories holding them (one level deep); repeatable. "
        "REST decodes each shard's ids with the one whose fingerprint its manifest records",
    )
    http_reads_need_token: bool = Field(False, description="REST read endpoints need the auth token too")
    max_message_bytes: int = Field(
        64 << 20, ge=1 << 20, le=2**31 - 1, description="largest gRPC message accepted or sent"
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="threads for record validation and LMDB reads (none: the CPUs, at most 8); "
        "commits get max(4, workers)",
    )
    max_concurrent_calls: int = Field(
        1024, ge=1, description="gRPC calls served at once, open streams included; past it RESOURCE_EXHAUSTED"
    )
    max_stream_inflight_bytes: int = Field(
        32 << 20, ge=1 << 20, description="a Write stream's unacknowledged bytes; past it the server stops reading it"
    )
    max_pending_commit_bytes: int = Field(
        2 << 30, ge=1 << 20, description="bytes waiting for commit, all streams; past it RESOURCE_EXHAUSTED"
    )
    min_free_bytes: int = Field(
        64 << 20, ge=0, description="free space the data directory keeps; under it writes get RESOURCE_EXHAUSTED"
    )
    auth_token: SecretStr | None = Field(None, description="if set, mutating calls need 'Bearer <token>'")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert")
    initial_map_bytes: int = Field(64 << 20, ge=1 << 20, description="a new shard's LMDB map size")
    max_shard_bytes: int = Field(1 << 40, ge=1 << 20, description="a shard's map never grows past this")
    shutdown_grace_seconds: float = Field(30.0, ge=0, description="time in-flight calls get on SIGTERM")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @property
    def worker_threads(self) -> int:
        """``workers``, or its default: more threads than CPUs only fight over the GIL."""
        return self.workers or min(os.cpu_count() or 4, 8)

    @field_validator("grpc", "http")
    @classmethod
    def _address(cls, value: str) -> str:
        if value == "off":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tokenizers(cls, value: Any) -> Any:
        """One path (a flag, ``LOGITCACHE_TOKENIZER=path``), a JSON list of paths, a list, or nothing."""
        if value is None:
            return []
        if isinstance(value, Path):
            return [value]
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"expected a path or a JSON list of paths, got {value!r}") from exc
            return [text] if text else []
        return value

    @field_validator("auth_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("expected a non-empty token (leave it unset to turn auth off)")
        return value

    @model_validator(mode="after")
    def _reads_token(self) -> ServerSettings:
        if self.http_reads_need_token and self.auth_token is None:
            raise ValueError("http_reads_need_token: expected an auth_token to check reads against")
        return self

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return value.upper()
