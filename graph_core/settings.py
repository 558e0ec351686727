"""Settings shared by every relaygraph process: from flags first, then ``RELAYGRAPH_*``
environment variables, then defaults. A wrong setting is an error naming it, never ignored."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graph_core.errors import RelaygraphError
from graph_core.keys import DEFAULT_PREFIX, MAX_SHARDS, Keys
from graph_core.redis_url import RedisUrlError, parse_redis_url

__all__ = ["BaseSettings", "SettingsError", "load_settings"]

ENV_PREFIX = "RELAYGRAPH_"


class SettingsError(RelaygraphError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


class BaseSettings(BaseModel):
    """Fields every process has. Subclass per process (dispatcher, worker, client)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str | None = None  # None: `relaygraph run` starts an embedded server
    prefix: str = DEFAULT_PREFIX
    # the key layout: 0, one server's; N, N shards (for Redis Cluster, in progress:
    # docs/cluster-plan.md). Every process of a deployment must use the same.
    shards: int = Field(default=0, ge=0, le=MAX_SHARDS)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    # Prometheus exposition on this port (every address); None: no metrics are collected
    metrics_port: int | None = Field(default=None, gt=0, lt=65536)
    log_format: Literal["text", "json"] = "text"  # json: one object per line (graph_core.logfmt)
    # otel: OpenTelemetry spans of runs and node attempts (the `otel` extra; the SDK and its
    # exporter are configured by the user, OTEL_* variables); off: OpenTelemetry is not imported
    tracing: Literal["off", "otel"] = "off"

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_redis_url(v)
            except RedisUrlError as e:
                raise ValueError(e.reason) from e
        return v

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        try:
            Keys(v)
        except RelaygraphError as e:
            raise ValueError(str(e)) from e
        return v

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix, self.shards)


S = TypeVar("S", bound=BaseSettings)


def load_settings(
    cls: type[S], flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> S:
    """Build settings: explicit ``flags`` (None values ignored) over ``RELAYGRAPH_<FIELD>``
    variables over defaults. Unknown ``RELAYGRAPH_*`` variables are errors too."""
    env = os.environ if env is None else env
    fields = cls.model_fields
    data: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        field = name[len(ENV_PREFIX) :].lower()
        if field not in fields:
            if field not in _KNOWN_ELSEWHERE:
                problems.append(f"{name}: unknown setting (known: {', '.join(sorted(fields))})")
            continue
        data[field] = _coerce_env(value)
    for key, value in (flags or {}).items():
        if value is not None:
            data[key] = value
    if problems:
        raise SettingsError(problems)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise SettingsError(
            [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        ) from e


def _coerce_env(value: str) -> Any:
    # A comma list, unless the value is a URL or JSON (RELAYGRAPH_API_KEYS holds a document).
    if "," in value and not value.lstrip().startswith(("redis", "unix", "{", "[")):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


# Settings of other processes, so that one shared environment works for all of them.
_KNOWN_ELSEWHERE = frozenset(
    {
        "redis_url",
        "prefix",
        "max_message_bytes",
        "metrics_port",
        "log_format",
        "tracing",
        "queues",
        "concurrency",
        "handlers",
        "poll_delay",
        "retention_s",
        "consumer",
        "claim_idle_s",
        "workers",
        "batch",
        "run_cache",
        "max_inbox_attempts",
        "sweep_grace_s",
        "schedules",
        "inbox_trim_s",
        "serve_shards",
        "shard_lease_s",
        "test_cluster",
        "test_redis_bin",
        "test_redis_url",
        "redis_bin",
        "lease_s",
        "heartbeat_s",
        "job_lease_s",
        "wake_fallback_s",
        "api_keys",
        "api_keys_file",
        "api_insecure",
        "api_cors_origins",
        "api_max_body_bytes",
        "api_redis_timeout_s",
    }
)
