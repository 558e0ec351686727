"""The dispatcher service: consumes the inbox, moves due timers into it, turns published
approvals into inbox entries, reclaims entries of dead dispatchers, dead-letters poison.

Several dispatchers may run on one Redis: they share the inbox through a consumer group,
and the run store's revision check keeps any event from being applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ReadOnlyError, ResponseError

from dispatcher.batch import BatchHandler
from dispatcher.connect import (
    MAY_BE_UNAVAILABLE,
    check_layout,
    heal,
    open_pubsub,
    redis_unavailable,
    refuse_cluster,
    retried,
)
from dispatcher.metrics import NO_METRICS, DispatcherMetrics, Recorder, serving
from dispatcher.ownership import Ownership
from dispatcher.processor import Outcome, Processor, run_tracing
from dispatcher.schedules import PERIOD_S as SCHEDULE_PERIOD_S
from dispatcher.schedules import Schedules
from dispatcher.settings import DispatcherSettings
from dispatcher.store import RunStore
from dispatcher.sweeper import sweep, trim_aborts
from graph_core import clock
from graph_core.errors import MessageError, RelaygraphError
from graph_core.events import FailRequested, ParentRef, ignored_event
from graph_core.keys import ShardKeys, is_run_id
from graph_core.logfmt import log_context
from graph_core.messages import (
    INBOX_FIELD,
    dumps,
    inbox_entry_raw,
    parse_approval,
    parse_inbox_entry,
)
from graph_core.resp import script_pipeline
from graph_core.status import TERMINAL_RUN

__all__ = ["Dispatcher"]

log = logging.getLogger("relaygraph.dispatcher")

TIMER_POLL_S = 0.25
STOP_TIMEOUT_S = 15.0  # a stopping dispatcher's shard loops finish their batches in this
HOUSEKEEPING_S = 60.0  # longest wait before looking at timers and leases again
RECONNECT_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0)
INBOX_FIELD_B = INBOX_FIELD.encode()
APPROVAL_SEEN_TTL_S = 600  # an identical publish within this many seconds is a duplicate

# Move due timers into the inbox atomically, so a timer is never lost or doubled by a crash.
_MOVE_TIMERS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', member)
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""

# Forward a published approval into the inbox once, however many dispatchers heard it.
_FORWARD_APPROVAL = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[2])) then
  redis.call('XADD', KEYS[2], '*', 'm', ARGV[1])
  return 1
end
return 0
"""

# Trim inbox entries every consumer has read and acknowledged: below both the group's
# last-delivered id and the oldest pending entry.
_TRIM_INBOX = """
local function older(a, b)  -- stream ids compare as (ms, seq) numbers, not as strings
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local floor = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local cut = info['last-delivered-id']
  local pending = redis.call('XPENDING', KEYS[1], info['name'])
  if pending[1] > 0 then cut = pending[2] end
  if floor == nil or older(cut, floor) then floor = cut end
end
if floor == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
"""


class Dispatcher:
    def __init__(
        self, redis: Redis, settings: DispatcherSettings, metrics: DispatcherMetrics | None = None
    ) -> None:
        """``metrics``: where to count (default: counters of its own if ``metrics_port`` is
        set, served on it while ``run`` runs; else nothing is counted)."""
        # redis-py 5 annotates async results as ``Awaitable[T] | T``; typed as Any here.
        self.redis: Any = redis
        self.settings = settings
        self.keys = settings.keys
        if metrics is None and settings.metrics_port is not None:
            metrics = DispatcherMetrics()
        self.metrics = metrics
        self.recorder: Recorder = metrics if metrics is not None else NO_METRICS
        self.store = RunStore(redis, self.keys, retention_s=settings.retention_s)
        self.processor = Processor(
            self.store,
            run_cache=settings.run_cache,
            metrics=self.recorder,
            tracing=run_tracing(settings),
        )
        self.batches = BatchHandler(self.processor)
        self.schedules = Schedules(redis, self.keys, self.store)
        self.consumer = settings.consumer or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._move_timers = redis.register_script(_MOVE_TIMERS)
        self._forward_approval = redis.register_script(_FORWARD_APPROVAL)
        self._trim_inbox = redis.register_script(_TRIM_INBOX)
        self.processed = 0
        self.ready = asyncio.Event()
        # the shards this dispatcher serves, assigned and taken over (dispatcher/ownership.py)
        self.ownership = Ownership(
            redis,
            self.keys,
            self.consumer,
            settings.assigned_shards,
            settings.shard_lease_s,
            self._start_shard,
            on_change=metrics.shards_served if metrics is not None else None,
            on_stop=self._interrupt_read,
        )
        # shard -> its inbox loop, while blocked reading the inbox (nothing in hand)
        self._reading: dict[int, asyncio.Task[Any]] = {}
        self._trimmed: dict[int, float] = {}  # shard -> when its inbox was last trimmed
        self._created = time.monotonic()

    @property
    def serving(self) -> list[ShardKeys]:
        """The shards this dispatcher serves now (when not running: those it is
        assigned; on one server, the only one)."""
        served = self.ownership.served
        return [self.keys.shard(k) for k in sorted(served or self.ownership.assigned)]

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set: then every shard's loops finish the batch in hand
        and the shard leases are released (sharded layout). Cancelling the task stops at
        once and releases nothing, as a crash would (its leases lapse)."""
        stop = stop or asyncio.Event()
        await refuse_cluster(self.redis)
        await check_layout(self.redis, self.keys)
        try:
            await self._ensure_group()
        except ResponseError as e:  # it answers, but cannot serve now (out of memory, ...)
            if isinstance(e, ReadOnlyError) or not redis_unavailable(e):
                raise  # a replica at start: the URL names no primary (a failover later waits)
            log.warning("Redis cannot serve yet (%s): the inbox loop waits for it", e)
        with serving(self.metrics, self.settings):
            await self._serve(stop)

    def _start_shard(self, shard: ShardKeys, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """A shard's inbox, timers and leases: loops of its own, until ``stop``."""
        of = f"[{shard.shard}]" if self.keys.sharded else ""
        loops: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = {
            "inbox" + of: functools.partial(self._inbox_loop, shard=shard),
            "timers" + of: functools.partial(self._timer_loop, shard=shard),
            "reclaim" + of: functools.partial(self._reclaim_loop, shard=shard),
        }
        return [
            asyncio.create_task(self._supervise(name, loop, stop), name=name)
            for name, loop in loops.items()
        ]

    async def _serve(self, stop: asyncio.Event) -> None:
        loops: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = {
            "approvals": self._approval_loop,
            "housekeeping": self._housekeeping_loop,
            "schedules": self._schedule_loop,
        }
        tasks = [
            asyncio.create_task(self._supervise(name, loop, stop), name=name)
            for name, loop in loops.items()
        ]
        self.ownership.start()
        shards = asyncio.create_task(self.ownership.run(stop), name="shards")
        self.ready.set()
        log.info("dispatcher %s serving prefix %r", self.consumer, self.keys.prefix)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                [*tasks, shards, stopping], return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t in (*tasks, shards) and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            # stopped: the shards' loops finish the batch in hand, the leases are released
            await asyncio.wait([shards], timeout=STOP_TIMEOUT_S)
        finally:
            stopping.cancel()
            for t in [*tasks, shards]:
                t.cancel()
            for t in [*tasks, shards]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _supervise(
        self, name: str, loop: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        """Run ``loop``; when Redis goes away or cannot serve for now (a restart, a
        failover, out of memory, no replica in sync), wait and start it again."""
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await loop(stop)
                return
            except MAY_BE_UNAVAILABLE as e:
                if not retried(e):
                    raise  # says something is wrong (a reply, a request refused), not "not now"
                heal(self.redis)  # a cluster client may have dropped every node it knew
                # The server may have restarted (or failed over) and lost our latest writes:
                # a run cached at a revision it no longer has must be loaded again. (The
                # stamps apply.lua checks catch what a silent reconnect hides from us.)
                self.processor.cache.clear()
                if time.monotonic() - started > 10:
                    failures = 0
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                log.warning("%s loop: Redis unavailable (%s); retrying in %.2fs", name, e, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _ensure_group(self, shard: ShardKeys | None = None) -> None:
        """The dispatchers' group on ``shard``'s inbox (default: every shard served)."""
        for inbox in [shard.inbox] if shard else [s.inbox for s in self.serving]:
            try:
                await self.redis.xgroup_create(inbox, self.keys.inbox_group, "0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # --- inbox --------------------------------------------------------------------------

    async def _inbox_loop(self, stop: asyncio.Event, shard: ShardKeys) -> None:
        await self._ensure_group(shard)
        # First, entries this consumer read before a crash or disconnect and never acked.
        own = await self.redis.xreadgroup(
            self.keys.inbox_group, self.consumer, {shard.inbox: "0"}, count=1000
        )
        for _stream, entries in own or []:
            live = [(eid, f) for eid, f in entries if f]
            if live:
                await self._handle_batch(live, shard)
        while not stop.is_set():
            reader = asyncio.current_task()
            if reader is not None:
                self._reading[shard.shard] = reader
            try:
                reply = await self.redis.xreadgroup(
                    self.keys.inbox_group,
                    self.consumer,
                    {shard.inbox: ">"},
                    count=self.settings.batch,
                    block=500,
                )
            except ResponseError as e:
                if "NOGROUP" in str(e):  # the stream was deleted (FLUSHALL); recreate it
                    await self._ensure_group(shard)
                    continue
                raise
            finally:
                self._reading.pop(shard.shard, None)
            for _stream, entries in reply or []:
                await self._handle_batch(entries, shard)
            if reply:
                # what every group acknowledged goes now, not at the next housekeeping: an
                # entry handled is memory that helps nobody (a second of them at most stays)
                await self._trim_inbox_due(shard)

    def _interrupt_read(self, shard: ShardKeys) -> None:
        """A shard stops being served: an inbox loop blocked in its read stops now instead
        of at the read's end (what it read, if anything, stays pending for this consumer:
        read again at its next start, or taken by another dispatcher's reclaim). One with a
        batch in hand finishes it."""
        reader = self._reading.pop(shard.shard, None)
        if reader is not None:
            reader.cancel()

    async def _handle_batch(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]], shard: ShardKeys | None = None
    ) -> None:
        """Entries of one run are handled in inbox order, each seeing the state the one before
        left; entries of different runs together, in rounds: a round takes the next entry of
        every run in the batch, so its runs are loaded in one round trip and its transitions
        applied in another (``BatchHandler.handle_many``). ``shard``: whose inbox they come
        from (default: the first served); an entry about a run of another shard is handed
        on to that shard's inbox (its write acknowledges the entry in the run's inbox)."""
        shard = shard or self.serving[0]
        runs: dict[str, deque[tuple[bytes, bytes, Any]]] = {}
        elsewhere: list[tuple[bytes, bytes, str]] = []
        for entry_id, fields in entries:
            try:
                message = parse_inbox_entry(fields, self.settings.max_message_bytes)
            except MessageError as e:
                raw = inbox_entry_raw(fields)
                await self._dead_letter("inbox", raw, str(e), entry_id, shard)
                continue
            raw = fields[INBOX_FIELD_B]
            run = getattr(message, "run_id", None) or entry_id.decode()  # a submit's run id
            # (a run id that is not one is dead-lettered here, not handed on first)
            if (
                self.keys.sharded
                and is_run_id(run)
                and self.keys.shard_for(run).shard != shard.shard
            ):
                elsewhere.append((entry_id, raw, run))
                continue
            runs.setdefault(run, deque()).append((entry_id, raw, message))
        if elsewhere:
            await self._hand_on(elsewhere, shard)
        while runs:
            round_ = [queue.popleft() for queue in runs.values()]
            runs = {run: queue for run, queue in runs.items() if queue}
            results = await self.batches.handle_many([(m, eid.decode()) for eid, _, m in round_])
            settled: list[tuple[bytes, Any, Outcome]] = []
            for (entry_id, raw, message), result in zip(round_, results, strict=True):
                if isinstance(result, RelaygraphError):
                    # A clean refusal (unknown graph, corrupt stored record): poison, not a crash.
                    with _log_ids(message):
                        await self._dead_letter("inbox", raw, str(result), entry_id, shard)
                elif isinstance(result, Exception):
                    if redis_unavailable(result):  # not the entry's fault: do not count it
                        raise result  # the loop waits and reads its pending entries again
                    with _log_ids(message):
                        log.error(
                            "error handling inbox entry %s; it stays pending for retry",
                            entry_id,
                            exc_info=result,
                        )
                        await self._count_failure(entry_id, raw, message, shard)
                else:
                    self.processed += 1
                    if not result.acked or not result.applied:
                        settled.append((entry_id, message, result))
            await self._acknowledge(settled, shard)

    async def _hand_on(self, entries: list[tuple[bytes, bytes, str]], shard: ShardKeys) -> None:
        """Move entries about runs of other shards to their runs' inboxes, then acknowledge
        them here. A submission named by its entry id gets that id as its run id, so a
        crash between the two writes only sends a duplicate (which changes nothing)."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, raw, run in entries:
            message = raw
            if run == entry_id.decode():
                data = orjson.loads(raw)
                data["run_id"] = run
                message = orjson.dumps(data)
            pipe.xadd(self.keys.shard_for(run).inbox, {INBOX_FIELD: message})
        await pipe.execute()
        await self.redis.xack(shard.inbox, self.keys.inbox_group, *(e for e, _, _ in entries))

    async def _acknowledge(
        self, handled: list[tuple[bytes, Any, Outcome]], shard: ShardKeys
    ) -> None:
        """Acknowledge entries whose outcome was not acknowledged with a change, and announce
        those that changed nothing: one round trip."""
        if not handled:
            return
        pipe = script_pipeline(self.redis)  # it publishes
        unacked = [entry_id for entry_id, _, outcome in handled if not outcome.acked]
        if unacked:
            pipe.xack(shard.inbox, self.keys.inbox_group, *unacked)
        for _, message, outcome in handled:
            if not outcome.applied:
                event = self._ignored_event(message, outcome)
                pipe.execute_command(self.keys.publish_command, shard.events_channel, event)
        await pipe.execute()

    def _ignored_event(self, message: Any, outcome: Outcome) -> bytes:
        kind = getattr(message, "kind", "?")
        node_id = getattr(message, "node_id", None)
        self.recorder.ignored(kind)
        ids = {"run_id": outcome.run_id, "node_id": node_id}
        log.info("ignored %s for run %s: %s", kind, outcome.run_id, outcome.reason, extra=ids)
        return dumps(ignored_event(outcome.run_id, clock.now(), kind, outcome.reason, node_id))

    async def _count_failure(
        self, entry_id: bytes, raw: bytes, message: Any, shard: ShardKeys
    ) -> None:
        attempts_key = shard.inbox_attempts
        attempts = await self.redis.hincrby(attempts_key, entry_id, 1)
        if attempts < self.settings.max_inbox_attempts:
            return
        reason = f"handling failed {attempts} times"
        await self._dead_letter("inbox", raw, reason, entry_id, shard)
        await self.redis.hdel(attempts_key, entry_id)
        run_id = getattr(message, "run_id", None)
        if run_id:
            await self._fail_poisoned_run(run_id, reason)

    async def _fail_poisoned_run(self, run_id: str, reason: str) -> None:
        log.error("run %s: an event kept failing (%s); failing the run", run_id, reason)
        event = FailRequested(
            run_id=run_id,
            reason=f"an event kept failing: {reason}",
            code="poison",
            actor="dispatcher",
        )
        try:
            await self.processor.process(event)
        except Exception:
            log.exception("run %s: could not be marked failed", run_id)

    async def _dead_letter(
        self,
        source: str,
        raw: bytes,
        reason: str,
        entry_id: bytes | None,
        shard: ShardKeys | None = None,
    ) -> None:
        """Keep a rejected message in the dead letter stream; ``entry_id``: its entry in
        ``shard``'s inbox, acknowledged."""
        log.warning("dead-lettered a %s message: %s", source, reason)
        await self.redis.xadd(
            self.keys.deadletter,
            {"source": source, "reason": reason, "raw": raw[:65536], "at": str(clock.now())},
            maxlen=10_000,
            approximate=True,
        )
        self.recorder.dead_lettered(source)
        if source == "inbox":
            await self._tell_parent(raw, reason)
        if entry_id is not None:
            inbox = (shard or self.serving[0]).inbox
            await self.redis.xack(inbox, self.keys.inbox_group, entry_id)

    async def _tell_parent(self, raw: bytes, reason: str) -> None:
        """A dead-lettered child run's submission, or a child run's end, would leave its
        parent waiting for ever: the parent hears that the child failed instead."""
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                return
            kind, parent = data.get("kind"), data.get("parent")
            if kind == "submit" and isinstance(parent, dict) and data.get("run_id"):
                ref = ParentRef.model_validate(parent)
                child = str(data["run_id"])
            elif kind == "child":
                ref = ParentRef(
                    run_id=data["run_id"],
                    node_id=data["node_id"],
                    visit=data["visit"],
                    attempt=data["attempt"],
                    item=data.get("item"),
                )
                child = str(data["child_run_id"])
            else:
                return
            why = f"the child run's {'start' if kind == 'submit' else 'end'} was rejected: {reason}"
            await self.store.child_failed(child, ref, "ChildRunRejected", why)
        except Exception:  # best effort: the dead letter itself is kept either way
            log.exception("could not tell a parent run about a rejected child message")

    # --- timers, approvals, recovery ----------------------------------------------------

    async def _timer_loop(self, stop: asyncio.Event, shard: ShardKeys) -> None:
        """Move a shard's due timers and lapsed leases into its inbox; sleep until the next
        is due."""
        while not stop.is_set():
            now_ms = int(clock.now() * 1000)
            moved = 0
            for zset in (shard.timers, shard.leases):
                moved += await self._move_timers(keys=[zset, shard.inbox], args=[now_ms, 100])
            if moved:
                continue
            wait = TIMER_POLL_S
            for zset in (shard.timers, shard.leases):
                nxt = await self.redis.zrange(zset, 0, 0, withscores=True)
                if nxt:
                    wait = max(0.0, min(wait, nxt[0][1] / 1000 - clock.now()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

    async def _approval_loop(self, stop: asyncio.Event) -> None:
        pubsub = await open_pubsub(self.redis)
        try:
            await pubsub.subscribe(self.keys.approvals_channel)
            while not stop.is_set():
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if msg is None or msg.get("type") != "message":
                    continue
                await self._approval_published(msg["data"])
        finally:
            with contextlib.suppress(Exception):  # a dead connection: closing still goes on
                await pubsub.unsubscribe()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _approval_published(self, raw: bytes) -> None:
        digest = hashlib.sha256(raw).hexdigest()
        try:
            approval = parse_approval(raw, self.settings.max_message_bytes)
        except MessageError as e:
            seen = self.keys.shard(0).approval_seen(digest)  # no run to tell its shard
            # Race site: every dispatcher hears the publish; the seen key (SET NX) lets one of
            # them dead-letter it. Losing a dead letter to a crash here is harmless.
            if await self.redis.set(seen, b"1", nx=True, ex=APPROVAL_SEEN_TTL_S):
                await self._dead_letter("approvals", raw, str(e), None)
            return
        # Every dispatcher hears a publish; one script call marks it seen and puts one copy in
        # the durable inbox, atomically (a crash between the two would lose the approval).
        shard = self.keys.shard_for(approval.run_id)
        await self._forward_approval(
            keys=[shard.approval_seen(digest), shard.inbox],
            args=[approval.model_dump_json().encode(), APPROVAL_SEEN_TTL_S],
        )

    async def _reclaim_loop(self, stop: asyncio.Event, shard: ShardKeys) -> None:
        idle_ms = int(self.settings.claim_idle_s * 1000)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), timeout=max(1.0, self.settings.claim_idle_s / 3)
                )
            if stop.is_set():
                return
            reply = await self.redis.xautoclaim(
                shard.inbox, self.keys.inbox_group, self.consumer, idle_ms, "0-0", count=100
            )
            entries = reply[1] if reply else []
            live = [(eid, f) for eid, f in entries if f]
            if live:
                log.info("reclaimed %d inbox entries left pending by another dispatcher", len(live))
                await self._handle_batch(live, shard)

    async def _housekeeping_loop(self, stop: asyncio.Event) -> None:
        """Drop finished runs whose keys expired (retention) from the run indexes."""
        while not stop.is_set():
            cutoff_ms = int((clock.now() - self.settings.retention_s) * 1000)
            for shard in self.serving:
                for status in TERMINAL_RUN:
                    await self.redis.zremrangebyscore(
                        shard.runs_by_status(status.value), "-inf", cutoff_ms
                    )
                await self._prune_all_runs(cutoff_ms, shard)
                await trim_aborts(self.redis, shard)
                await self._trim_inbox_due(shard)  # an idle inbox loop trims nothing
                await sweep(self.redis, self.keys, self.settings.sweep_grace_s, shard)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=HOUSEKEEPING_S)

    async def _schedule_loop(self, stop: asyncio.Event) -> None:
        """Scheduled triggers: submit the runs of due ticks (dispatcher/schedules.py)."""
        while not stop.is_set():
            if self.settings.schedules:
                await self.schedules.tick()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=SCHEDULE_PERIOD_S)

    async def _trim_inbox_due(self, shard: ShardKeys) -> None:
        """``trim_inbox`` of ``shard``, at most every ``inbox_trim_s``."""
        if (
            time.monotonic() - self._trimmed.setdefault(shard.shard, self._created)
            >= self.settings.inbox_trim_s
        ):
            self._trimmed[shard.shard] = time.monotonic()
            await self._trim(shard)

    async def trim_inbox(self) -> int:
        """Delete inbox entries that every dispatcher group has read and acknowledged (in
        every shard served)."""
        return sum([await self._trim(shard) for shard in self.serving])

    async def _trim(self, shard: ShardKeys) -> int:
        try:
            return int(await self._trim_inbox(keys=[shard.inbox]))
        except ResponseError:  # no stream or no group yet
            return 0

    async def _prune_all_runs(self, cutoff_ms: int, shard: ShardKeys) -> None:
        # The all-runs and per-graph indexes are scored by creation; an old entry is dropped
        # once its meta is gone.
        indexes = [shard.runs_all]
        graph_ids = await self.redis.hkeys(self.keys.graph_latest)
        indexes += [shard.runs_by_graph(g.decode()) for g in graph_ids]
        for index in indexes:
            old = await self.redis.zrangebyscore(index, "-inf", cutoff_ms, 0, 500)
            for run_id in old:
                if not await self.redis.exists(self.keys.run(run_id.decode()).meta):
                    await self.redis.zrem(index, run_id)


def _log_ids(message: Any) -> log_context:
    """Log lines about this message carry its run's and node's ids."""
    return log_context(
        run_id=getattr(message, "run_id", None), node_id=getattr(message, "node_id", None)
    )
