"""Reading what happened: run records, the handlers' execution marks, the inbox backlog.

Every read tolerates a server that is briefly away (the restart test polls through it):
callers wait with ``wait_for(..., ignore=REDIS_DOWN)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from graph_core.events import history_event
from graph_core.keys import Keys
from graph_core.state import NodeRecord, RunRecord
from graph_core.status import TERMINAL_RUN
from tests.faults.handlers import Marks
from tests.faults.procs import ProcessDied
from tests.support.waiting import wait_for

__all__ = ["REDIS_DOWN", "Observer", "Start"]

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)


@dataclass(frozen=True)
class Start:
    """One handler start, as the handler recorded it."""

    pid: int
    at: float  # epoch seconds, the worker's clock (same host)
    attempt: int


class Observer:
    def __init__(self, redis: Any, keys: Keys, marks: Marks) -> None:
        self.redis = redis
        self.keys = keys
        self.marks = marks

    # --- runs ---------------------------------------------------------------------------

    async def runs(self, run_ids: Iterable[str]) -> dict[str, RunRecord | None]:
        ids = list(run_ids)
        pipe = self.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(self.keys.run(run_id).meta, "run")
        raws = await pipe.execute()
        return {
            run_id: RunRecord.model_validate_json(raw) if raw is not None else None
            for run_id, raw in zip(ids, raws, strict=True)
        }

    async def run(self, run_id: str) -> RunRecord | None:
        return (await self.runs([run_id]))[run_id]

    async def finished_count(self, run_ids: Iterable[str]) -> int:
        records = await self.runs(run_ids)
        return sum(1 for r in records.values() if r is not None and r.status in TERMINAL_RUN)

    async def wait_finished(
        self,
        run_ids: Iterable[str],
        timeout: float = 60.0,
        guard: Callable[[], None] | None = None,
    ) -> dict[str, RunRecord]:
        """Wait until every run is completed, failed or cancelled; their records.

        ``guard`` is called on every poll and may raise to stop waiting early (e.g.
        `Fleet.check_alive`: no point waiting for runs once every worker has died).
        """
        ids = list(run_ids)
        last: dict[str, RunRecord | None] = {}

        async def all_done() -> dict[str, RunRecord] | None:
            if guard is not None:
                guard()
            last.update(await self.runs(ids))
            done = {k: r for k, r in last.items() if r is not None and r.status in TERMINAL_RUN}
            return done if len(done) == len(ids) else None

        def describe() -> str:
            left = [k for k in ids if (r := last.get(k)) is None or r.status not in TERMINAL_RUN]
            sample = {k: (r.status.value if (r := last.get(k)) else None) for k in left[:5]}
            return f"{len(left)} of {len(ids)} runs to finish (e.g. {sample})"

        try:
            found: Any = await wait_for(
                all_done, timeout=timeout, interval=0.05, message=describe, ignore=REDIS_DOWN
            )
        except ProcessDied:
            raise
        except AssertionError as e:
            left = [k for k in ids if (r := last.get(k)) is None or r.status not in TERMINAL_RUN]
            if not left:
                raise
            details = "\n".join([await self.explain(run_id) for run_id in left[:3]])
            raise AssertionError(f"{e}\nwhere the first stuck runs are:\n{details}") from e
        done: dict[str, RunRecord] = found
        return done

    async def explain(self, run_id: str) -> str:
        """What a stuck run is waiting for: its live nodes, their jobs and leases, the end
        of its history (for a failure message)."""
        lines = [f"run {run_id}:"]
        try:
            for node_id, rec in (await self.nodes(run_id)).items():
                if rec.status.value in ("completed", "skipped", "pending"):
                    continue
                job = f"rg:{run_id}:{node_id}:{rec.visits}:{rec.attempt}"  # the queue's id
                queue = self.keys.queue("default")
                state = {
                    "job key": await self.redis.exists(f"arq:job:{job}"),
                    "in queue": await self.redis.zscore(queue, job),
                    "in progress": await self.redis.pttl(f"arq:in-progress:{job}"),
                    "arq tries": await self.redis.get(f"arq:retry:{job}"),
                }
                leases = [
                    m
                    for m in await self.redis.zrange(self.keys.leases, 0, -1)
                    if run_id.encode() in m
                ]
                lines.append(
                    f"  node {node_id}: {rec.status.value} visit {rec.visits} attempt "
                    f"{rec.attempt}; job {job}: {state}; leases {leases}"
                )
            for event in (await self.history(run_id))[-4:]:
                lines.append(f"  history: {event}")
        except REDIS_DOWN as e:
            lines.append(f"  (could not read: {e!r})")
        return "\n".join(lines)

    async def nodes(self, run_id: str) -> dict[str, NodeRecord]:
        raw = await self.redis.hgetall(self.keys.run(run_id).nodes)
        return {k.decode(): NodeRecord.model_validate_json(v) for k, v in raw.items()}

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(self.keys.run(run_id).events)
        return [history_event(run_id, fields) for _, fields in entries]

    async def pending(self) -> int:
        """Inbox entries delivered to a dispatcher and not acknowledged yet."""
        info = await self.redis.xpending(self.keys.inbox, self.keys.inbox_group)
        return int(info["pending"])

    async def backlog(self) -> int:
        """Pending entries plus entries no dispatcher has read yet."""
        groups = await self.redis.xinfo_groups(self.keys.inbox)
        lag = sum(int(g.get("lag") or 0) for g in groups)
        return lag + await self.pending()

    # --- the handlers' marks ------------------------------------------------------------

    async def started_counts(self) -> dict[str, int]:
        """idempotency key -> how often a handler started for it (this prefix only)."""
        keys = [k async for k in self.redis.scan_iter(self.marks.started_pattern, count=1000)]
        if not keys:
            return {}
        values = await self.redis.mget(keys)
        cut = len(self.marks.started(""))
        return {k.decode()[cut:]: int(v) for k, v in zip(keys, values, strict=True)}

    async def started(self, run_id: str, node_id: str, visit: int = 1) -> int:
        raw = await self.redis.get(self.marks.started(Marks.key_of(run_id, node_id, visit)))
        return int(raw or 0)

    async def finished(self, run_id: str, node_id: str, visit: int = 1) -> int:
        raw = await self.redis.get(self.marks.finished(Marks.key_of(run_id, node_id, visit)))
        return int(raw or 0)

    async def starts(self, run_id: str, node_id: str, visit: int = 1) -> list[Start]:
        raw = await self.redis.lrange(
            self.marks.starts(Marks.key_of(run_id, node_id, visit)), 0, -1
        )
        found = []
        for item in raw:
            pid, at, attempt = item.decode().split()
            found.append(Start(int(pid), float(at), int(attempt)))
        return found
