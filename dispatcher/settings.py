"""Dispatcher settings (flags, then RELAYGRAPH_* variables, then defaults)."""

from __future__ import annotations

from pydantic import Field

from dispatcher.runcache import DEFAULT_RUN_CACHE
from dispatcher.store import DEFAULT_RETENTION_S
from graph_core.settings import BaseSettings

__all__ = ["DispatcherSettings"]


class DispatcherSettings(BaseSettings):
    consumer: str | None = None  # consumer name in the inbox group; default host-pid-random
    batch: int = Field(default=64, ge=1, le=10_000)  # inbox entries read per round
    claim_idle_s: float = Field(default=15.0, gt=0)  # reclaim entries pending this long
    max_inbox_attempts: int = Field(default=5, ge=1)  # then the entry is dead-lettered
    retention_s: int = Field(default=DEFAULT_RETENTION_S, ge=60)  # finished runs kept
    # a queued node with no job, no in-progress key and no lease for this long is re-run
    sweep_grace_s: float = Field(default=60.0, ge=1)
    # runs whose state is kept for their next event (no load round trip); 0: none
    run_cache: int = Field(default=DEFAULT_RUN_CACHE, ge=0, le=1_000_000)
    # fire scheduled triggers (every dispatcher does, once per tick in all; false: not this one)
    schedules: bool = True
    # acknowledged inbox entries are trimmed this often (seconds) while entries come
    inbox_trim_s: float = Field(default=1.0, gt=0)
