"""Which shards a dispatcher serves, and the loops it runs for each (docs/cluster-plan.md).

On one server a dispatcher serves the only shard. In the sharded layout it serves the
shards it is assigned (``serve_shards``, ``--shards 0-7``; default every one) and takes
over any other shard that nobody serves:

* each shard has a lease key (``ShardKeys.dispatcher``) with a TTL of ``shard_lease_s``,
  renewed every third of it: an assigned dispatcher writes ``a:<consumer>``;
* a dispatcher that finds another shard's key missing (its dispatchers died, or stopped
  and released it) takes it (``t:<consumer>``, only if still missing) and starts its
  loops; its reclaim loop then takes the dead dispatcher's pending inbox entries;
* it keeps a taken shard while the key holds its own value: once an assigned dispatcher
  writes ``a:...`` again, it stops that shard's loops (each finishes the batch in hand)
  and hands the shard back.

Two dispatchers may serve a shard for a moment (a hand-back, a takeover race): they share
its inbox through the consumer group, and the run store's revision check applies each
event once, as with several dispatchers on one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.connect import MAY_BE_UNAVAILABLE, retried
from graph_core.keys import Keys, ShardKeys
from graph_core.resp import script_pipeline
from graph_core.shardset import format_shard_set

__all__ = ["ASSIGNED", "TAKEN", "Ownership", "ShardLoops"]

log = logging.getLogger("relaygraph.dispatcher")

ASSIGNED: Final = "a:"  # a lease's value: a dispatcher the shard is assigned to
TAKEN: Final = "t:"  # one that took the shard over while nobody served it
STOP_GRACE_S: Final = 10.0  # a stopping shard's loops finish their batch within this

# One shard's lease (one key; sent with EVAL, short enough, so a server that lost its
# scripts needs no reload). Race site: several dispatchers may find a lease missing at
# once; GET and SET in one script let one of them take it. Assigned ('assigned'): always
# written. Otherwise ('take'): written only if missing or already ours. 'look': read only.
# Returns {written (1/0), the value held before ('' none), its remaining ms}.
_LEASE = """
local held = redis.call('GET', KEYS[1])
local mode = ARGV[3]
if mode == 'assigned' or (mode == 'take' and (not held or held == ARGV[1])) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return {1, held or '', tonumber(ARGV[2])}
end
return {0, held or '', redis.call('PTTL', KEYS[1])}
"""

# A clean stop: drop a lease that is still ours, so another dispatcher takes the shard
# over at its next look instead of when the lease lapses.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

ShardLoops = Callable[[ShardKeys, asyncio.Event], list["asyncio.Task[None]"]]
"""Starts a shard's loops (inbox, timers, reclaim), each stopping once the event is set."""


@dataclass
class _Served:
    keys: ShardKeys
    taken: bool  # taken over, not assigned
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]
    since: float = field(default_factory=time.monotonic)


class Ownership:
    """The shards one dispatcher serves (``served``), their loops, and their leases."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        consumer: str,
        assigned: frozenset[int],
        lease_s: float,
        start_loops: ShardLoops,
        on_change: Callable[[int, int], None] | None = None,
        on_stop: Callable[[ShardKeys], None] | None = None,
    ) -> None:
        """``on_change(assigned, taken)``: told the number of shards served of each kind
        whenever it changes. ``on_stop(shard)``: told as a shard's loops are asked to stop
        (to interrupt a blocking read, say)."""
        self.redis = redis
        self.keys = keys
        self.assigned = assigned
        self.lease_s = lease_s
        self.start_loops = start_loops
        self.on_change = on_change
        self.on_stop = on_stop
        self.values = {True: ASSIGNED + consumer, False: TAKEN + consumer}  # by "assigned"
        self.served: dict[int, _Served] = {}
        # shards no longer served whose loops are finishing their batch (in the background:
        # the leases are renewed meanwhile)
        self._finishing: set[asyncio.Task[None]] = set()
        # shard -> when its holder's lease lapses (as last seen), and that holder
        self._lapses: dict[int, tuple[float, str]] = {}
        self._started = time.monotonic()

    @property
    def taken(self) -> frozenset[int]:
        """The shards served that were taken over (not assigned)."""
        return frozenset(k for k, s in self.served.items() if s.taken)

    def start(self) -> None:
        """Start the loops of every assigned shard."""
        self._started = time.monotonic()
        for k in sorted(self.assigned):
            self._serve(k, taken=False)
        if self.keys.sharded:
            log.info("serving shards %s (assigned)", format_shard_set(self.assigned))

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the leases until ``stop``, taking over and handing back shards; then stop
        every shard's loops and release the leases. A shard loop's fatal error is raised.
        Cancelled (a simulated crash), it stops the loops at once and releases nothing."""
        try:
            while not stop.is_set():
                if self.keys.sharded:
                    await self._look()
                await self._wait(stop, self.lease_s / 3 if self.keys.sharded else None)
            for k in list(self.served):
                self._stop_serving(k)
            await self._finished()
            if self.keys.sharded:
                await self._release_all()
        except BaseException:
            tasks = [t for served in self.served.values() for t in served.tasks]
            for task in [*tasks, *self._finishing]:
                task.cancel()
            await asyncio.gather(*tasks, *self._finishing, return_exceptions=True)
            raise

    async def _wait(self, stop: asyncio.Event, timeout: float | None) -> None:
        """Until ``stop``, ``timeout`` or a shard loop's end; raise what ended a loop."""
        stopping = asyncio.ensure_future(stop.wait())
        tasks = [t for s in self.served.values() for t in s.tasks]
        try:
            done, _ = await asyncio.wait(
                [stopping, *tasks, *self._finishing],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopping.cancel()
        for task in done:
            if task is stopping:
                continue
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
            self._finishing.discard(task)
            for served in self.served.values():  # ended by itself: not waited on again
                served.tasks = [t for t in served.tasks if t is not task]

    # --- leases -------------------------------------------------------------------------

    async def _look(self) -> None:
        """Renew every lease held, take any shard nobody serves (after one lease period
        from the start: a peer starting at the same time has not written its own yet),
        hand back what an assigned dispatcher serves again. Redis unavailable: next time."""
        may_take = time.monotonic() - self._started >= self.lease_s
        shards = range(self.keys.shards)
        pipe = script_pipeline(self.redis)
        for k in shards:
            mine = k in self.assigned
            mode = "assigned" if mine else "take" if may_take or k in self.served else "look"
            lease = self.keys.shard(k).dispatcher
            pipe.eval(_LEASE, 1, lease, self.values[mine], int(self.lease_s * 1000), mode)
        try:
            replies = await pipe.execute()
        except MAY_BE_UNAVAILABLE as e:
            if not retried(e):
                raise
            log.warning("shard leases: Redis unavailable (%s); serving the same shards", e)
            return
        now = time.monotonic()
        for k, (written, held_raw, ttl_ms) in zip(shards, replies, strict=True):
            held = held_raw.decode() if isinstance(held_raw, bytes) else str(held_raw)
            if k in self.assigned:
                if held.startswith(TAKEN):
                    log.info("shard %d: taking it back from %s (assigned here)", k, held[2:])
            elif written and k not in self.served:
                self._take_over(k, now)
            elif written and not held:
                log.warning("shard %d: our lease on it had lapsed; took it again", k)
            elif not written:
                if int(ttl_ms) > 0:
                    self._lapses[k] = (now + int(ttl_ms) / 1000, held)
                if k in self.served:
                    served_for = now - self.served[k].since
                    self._stop_serving(k)
                    if held.startswith(ASSIGNED):
                        log.info(
                            "handed shard %d back to %s, which it is assigned to (served it "
                            "%.1fs after taking it over)",
                            k,
                            held[2:],
                            served_for,
                        )
                    else:
                        log.info("shard %d: %s took it over too; stopped serving it", k, held[2:])

    def _take_over(self, k: int, now: float) -> None:
        seen = self._lapses.pop(k, None)
        if seen is None:  # missing at our first look: we cannot tell since when
            log.warning("taking over shard %d: nobody holds its lease", k)
        else:
            lapsed, holder = seen
            ago = max(0.0, now - lapsed)
            log.warning(
                "taking over shard %d from %s: nobody has served it for about %.1fs (its "
                "lease lapsed %.1fs ago)",
                k,
                holder[2:],
                ago + self.lease_s,  # its last renewal, if its lease is as long as ours
                ago,
            )
        self._serve(k, taken=True)

    async def _release_all(self) -> None:
        pipe = script_pipeline(self.redis)
        for k in range(self.keys.shards):
            pipe.eval(_RELEASE, 1, self.keys.shard(k).dispatcher, self.values[k in self.assigned])
        with contextlib.suppress(*MAY_BE_UNAVAILABLE):  # best effort: else the leases lapse
            await pipe.execute()

    # --- loops --------------------------------------------------------------------------

    def _serve(self, k: int, *, taken: bool) -> None:
        keys = self.keys.shard(k)
        stop = asyncio.Event()
        self.served[k] = _Served(keys, taken, stop, self.start_loops(keys, stop))
        self._changed()

    def _stop_serving(self, k: int) -> None:
        """Stop serving shard ``k`` now: its loops are told to stop (a blocked inbox read is
        interrupted) and finish the batch in hand in the background (cancelled past
        ``STOP_GRACE_S``), while the other leases go on being renewed."""
        served = self.served.pop(k)
        served.stop.set()
        if self.on_stop is not None:
            self.on_stop(served.keys)
        self._changed()
        if served.tasks:
            self._finishing.add(asyncio.create_task(self._finish(served.tasks)))

    @staticmethod
    async def _finish(tasks: list[asyncio.Task[None]]) -> None:
        """Until ``tasks`` end (cancelled past ``STOP_GRACE_S``); raise what one raised
        while stopping (the dispatcher stops)."""
        _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in late:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _finished(self) -> None:
        """Until every stopping shard's loops have ended."""
        while self._finishing:
            done = await asyncio.gather(*self._finishing, return_exceptions=True)
            self._finishing.clear()
            for result in done:
                if isinstance(result, Exception):
                    raise result

    def _changed(self) -> None:
        if self.on_change is not None:
            taken = len(self.taken)
            self.on_change(len(self.served) - taken, taken)
