"""Worker settings (flags, then ``RELAYGRAPH_*`` variables, then defaults)."""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import Field, field_validator, model_validator

from graph_core.settings import BaseSettings

__all__ = ["DEFAULT_QUEUE", "WorkerSettings"]

DEFAULT_QUEUE: Final = "default"  # the queue of a node without ``"queue"`` (as the engine uses)
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_\-.:]{1,128}$")


class WorkerSettings(BaseSettings):
    """Settings of one worker process.

    ``concurrency`` is per queue: a process serving two queues runs up to ``2 * concurrency``
    jobs at once. ``job_lease_s`` is how long a job stays claimed without a sign of life from
    its worker; the worker renews the claim while the handler runs, so the lease bounds how
    long a crashed worker's jobs wait before another worker runs them, not how long a handler
    may take (that is the node's ``timeout_s``). ``lease_s`` is relaygraph's own, shorter lease
    (renewed every ``heartbeat_s`` by a thread): when it lapses the dispatcher re-runs the
    node as a new attempt, so a dead worker is noticed within seconds.
    """

    queues: list[str] = Field(default_factory=lambda: [DEFAULT_QUEUE], min_length=1)
    concurrency: int = Field(default=10, ge=1, le=10_000)
    poll_delay: float = Field(default=0.05, gt=0, le=60)
    handlers: str | None = None  # "pkg.module" or "pkg.module:attr" holding a HandlerRegistry
    job_lease_s: float = Field(default=3.0, ge=0.5, le=86_400)
    lease_s: float = Field(default=3.0, ge=0.5, le=3600)  # a dead worker is noticed after this
    heartbeat_s: float = Field(default=1.0, gt=0, le=600)  # how often leases are renewed
    wake_fallback_s: float = Field(default=0.5, gt=0, le=60)  # poll when no wake-up arrives

    @model_validator(mode="after")
    def _check_lease(self) -> WorkerSettings:
        shortest = min(self.lease_s, self.job_lease_s)
        if self.heartbeat_s * 2 > shortest:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be at most half of lease_s and "
                f"job_lease_s ({shortest}), or a healthy worker's leases would lapse"
            )
        return self

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, v: Any) -> Any:
        # RELAYGRAPH_QUEUES=default (no comma) arrives as one string
        if isinstance(v, str):
            return [q.strip() for q in v.split(",") if q.strip()]
        return v

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _QUEUE_NAME.match(name):
                raise ValueError(
                    f"queue name {name!r} must be 1-128 letters, digits, '_', '-', '.' or ':'"
                )
        if len(set(v)) != len(v):
            raise ValueError(f"queue names must be distinct, got {v}")
        return v
