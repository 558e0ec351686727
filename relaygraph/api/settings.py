"""Settings of the HTTP API process (``relaygraph api``): flags, then ``RELAYGRAPH_*``."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from dispatcher.store import DEFAULT_RETENTION_S
from graph_core.settings import BaseSettings

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ApiSettings"]

DEFAULT_MAX_BODY_BYTES = 1_048_576


class ApiSettings(BaseSettings):
    # The keys document itself (JSON, as in a keys file), or the path of a keys file.
    api_keys: str | None = None
    api_keys_file: str | None = None
    # Serve without keys on a non-loopback address (everyone is an anonymous admin).
    api_insecure: bool = False
    # Origins allowed to call the API from a browser (CORS); none by default.
    api_cors_origins: list[str] = Field(default_factory=list)
    api_max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    # How long one Redis round trip may take before the request answers 503.
    api_redis_timeout_s: float = Field(default=2.0, gt=0, le=60)
    retention_s: int = Field(default=DEFAULT_RETENTION_S, ge=60)

    @field_validator("api_cors_origins", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # RELAYGRAPH_API_CORS_ORIGINS: a comma list becomes a list; a single origin stays text
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value
