"""Scheduled triggers, fired by every dispatcher and run once per tick however many do.

Each dispatcher looks at the latest version of every registered graph (the list re-read every
``REFRESH_S``) and, every ``PERIOD_S``, submits a run for each tick of a scheduled trigger
that fell due since the newest tick fired (``<prefix>:triggers:last``). The submission's
idempotency key names the graph, the trigger and the tick, so when several dispatchers
submit the same tick one run starts; the newest tick fired only moves forward (a script).
A trigger seen for the first time fires from its next tick on; after downtime, ``catch_up``
decides whether the missed ticks run (graph_core.triggers.due_ticks).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from dispatcher.store import RunStore
from graph_core import clock
from graph_core.keys import Keys
from graph_core.messages import SubmitRequest, encode_inbox
from graph_core.triggers import TriggerSpec, due_ticks, triggers_of

__all__ = ["PERIOD_S", "Schedules", "tick_key"]

log = logging.getLogger("relaygraph.dispatcher")

PERIOD_S: Final = 1.0  # how often due ticks are looked for
REFRESH_S: Final = 10.0  # how often the registered graphs are re-read
SLACK_S: Final = 10.0  # without catch_up, a tick this late still fires (a slow loop)

# KEYS: 1 the triggers' last-fired hash. ARGV: 1 field, 2 tick. Moves forward only.
_ADVANCE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or tonumber(cur) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


def tick_key(graph_id: str, trigger_id: str, tick: float) -> str:
    """The idempotency key of the run a tick starts: one run per tick, across dispatchers."""
    return f"trigger:{graph_id}:{trigger_id}:{int(tick)}"


class Schedules:
    def __init__(self, redis: Any, keys: Keys, store: RunStore) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self._advance = redis.register_script(_ADVANCE)
        self._scheduled: list[tuple[str, TriggerSpec]] = []
        self._refreshed = -REFRESH_S
        self.fired = 0  # runs submitted (duplicates across dispatchers included)

    async def refresh(self) -> None:
        """Re-read the latest version of every graph, keeping their scheduled triggers."""
        latest = await self.redis.hgetall(self.keys.graph_latest)
        scheduled = []
        for raw_id, raw_version in latest.items():
            graph_id = raw_id.decode()
            try:
                graph = await self.store.graph(graph_id, int(raw_version))
                specs = triggers_of(graph)
            except Exception:  # a corrupt graph must not stop the others' schedules
                log.exception("graph %r: its triggers could not be read", graph_id)
                continue
            scheduled += [(graph_id, s) for s in specs if s.type == "scheduled"]
        self._scheduled = scheduled
        self._refreshed = time.monotonic()

    async def tick(self, now: float | None = None) -> int:
        """Submit the runs of every tick due now; how many were submitted."""
        if time.monotonic() - self._refreshed >= REFRESH_S:
            await self.refresh()
        now = clock.now() if now is None else now
        submitted = 0
        if not self._scheduled:
            return 0
        fields = [Keys.trigger_field(graph_id, spec.id) for graph_id, spec in self._scheduled]
        lasts = await self.redis.hmget(self.keys.triggers_last, fields)  # one read for all
        for (graph_id, spec), field, raw in zip(self._scheduled, fields, lasts, strict=True):
            if raw is None:  # first sight: from the next tick on, nothing retroactive
                await self.redis.hsetnx(self.keys.triggers_last, field, repr(now))
                continue
            ticks, newest = due_ticks(spec, float(raw), now, SLACK_S)
            for tick in ticks:
                await self._submit(graph_id, spec, tick)
                submitted += 1
            if newest is not None:  # skipped ticks (no catch-up) are not run later either
                await self._advance(keys=[self.keys.triggers_last], args=[field, repr(newest)])
        self.fired += submitted
        return submitted

    async def _submit(self, graph_id: str, spec: TriggerSpec, tick: float) -> None:
        request = SubmitRequest(
            graph_id=graph_id, input=spec.input, idempotency_key=tick_key(graph_id, spec.id, tick)
        )
        # no run id yet (the entry id names the run): shard 0's inbox, which hands it on
        await self.redis.xadd(self.keys.shard(0).inbox, {"m": encode_inbox(request)})
        log.info("trigger %s of graph %r: tick %s due", spec.id, graph_id, int(tick))
