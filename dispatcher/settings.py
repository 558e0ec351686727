"""Dispatcher settings (flags, then RELAYGRAPH_* variables, then defaults)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from dispatcher.runcache import DEFAULT_RUN_CACHE
from dispatcher.store import DEFAULT_RETENTION_S
from graph_core.settings import BaseSettings
from graph_core.shardset import ShardSetError, parse_shard_set

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
    # sharded layout: the shards this dispatcher is assigned ("0-7", "0-3,8,12-15"; --shards);
    # None: every shard. It also takes over any other shard nobody serves (its lease lapsed).
    serve_shards: str | None = None
    # sharded layout: a shard's lease (who serves it), renewed every third of it; a shard
    # whose lease lapses is taken over by another dispatcher
    shard_lease_s: float = Field(default=5.0, ge=0.1, le=3600)

    @field_validator("serve_shards", mode="before")
    @classmethod
    def _join_list(cls, v: Any) -> Any:
        # RELAYGRAPH_SERVE_SHARDS=0-3,8 arrives split at its commas (graph_core.settings)
        return ",".join(str(x) for x in v) if isinstance(v, list) else v

    @field_validator("serve_shards")
    @classmethod
    def _check_shards(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            try:
                parse_shard_set(v, info.data.get("shards", 0))
            except ShardSetError as e:
                raise ValueError(f"{e} (--shards, RELAYGRAPH_SERVE_SHARDS)") from e
        return v

    @property
    def assigned_shards(self) -> frozenset[int]:
        """The shards this dispatcher is assigned: those ``serve_shards`` names, else every
        one (on one server, the only one, 0)."""
        if self.serve_shards is None:
            return frozenset(range(max(1, self.shards)))
        return parse_shard_set(self.serve_shards, self.shards)
