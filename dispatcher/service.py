"""The dispatcher service: consumes the inbox, moves due timers into it, turns published
approvals into inbox entries, reclaims entries of dead dispatchers, dead-letters poison.

Several dispatchers may run on one Redis: they share the inbox through a consumer group,
and the run store's revision check keeps any event from being applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from dispatcher.processor import Outcome, Processor
from dispatcher.settings import DispatcherSettings
from dispatcher.store import RunStore
from graph_core import clock
from graph_core.errors import MessageError, RelaygraphError
from graph_core.events import ErrorInfo
from graph_core.messages import dumps, parse_approval, parse_inbox

__all__ = ["Dispatcher"]

log = logging.getLogger("relaygraph.dispatcher")

# Move due timers into the inbox atomically, so a timer is never lost or doubled by a crash.
_MOVE_TIMERS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', member)
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


class Dispatcher:
    def __init__(self, redis: Redis, settings: DispatcherSettings) -> None:
        # redis-py 5 annotates async results as ``Awaitable[T] | T``; typed as Any here.
        self.redis: Any = redis
        self.settings = settings
        self.keys = settings.keys
        self.store = RunStore(redis, self.keys, retention_s=settings.retention_s)
        self.processor = Processor(self.store)
        self.consumer = settings.consumer or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._move_timers = redis.register_script(_MOVE_TIMERS)
        self.processed = 0
        self.ready = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        await self._ensure_group()
        tasks = [
            asyncio.create_task(self._inbox_loop(stop), name="inbox"),
            asyncio.create_task(self._timer_loop(stop), name="timers"),
            asyncio.create_task(self._approval_loop(stop), name="approvals"),
            asyncio.create_task(self._reclaim_loop(stop), name="reclaim"),
        ]
        self.ready.set()
        log.info("dispatcher %s serving prefix %r", self.consumer, self.keys.prefix)
        try:
            done, _ = await asyncio.wait(
                [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t in tasks and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                self.keys.inbox, self.keys.inbox_group, "0", mkstream=True
            )
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # --- inbox --------------------------------------------------------------------------

    async def _inbox_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                reply = await self.redis.xreadgroup(
                    self.keys.inbox_group,
                    self.consumer,
                    {self.keys.inbox: ">"},
                    count=self.settings.batch,
                    block=500,
                )
            except ResponseError as e:
                if "NOGROUP" in str(e):  # the stream was deleted (FLUSHALL); recreate it
                    await self._ensure_group()
                    continue
                raise
            for _stream, entries in reply or []:
                await self._handle_batch(entries)

    async def _handle_batch(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Entries of one run are handled in order; different runs concurrently."""
        by_run: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = defaultdict(list)
        for entry_id, fields in entries:
            by_run[_run_hint(fields)].append((entry_id, fields))
        await asyncio.gather(*(self._handle_in_order(group) for group in by_run.values()))

    async def _handle_in_order(self, group: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in group:
            await self._handle_entry(entry_id, fields)

    async def _handle_entry(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        raw = fields.get(b"m", b"")
        try:
            message = parse_inbox(raw, self.settings.max_message_bytes)
        except MessageError as e:
            await self._dead_letter("inbox", raw, str(e), entry_id)
            return
        try:
            outcome = await self.processor.handle(message)
        except RelaygraphError as e:
            # A clean refusal (unknown graph, corrupt stored record): poison, not a crash.
            await self._dead_letter("inbox", raw, str(e), entry_id)
            return
        except Exception:
            log.exception("error handling inbox entry %s; it stays pending for retry", entry_id)
            await self._count_failure(entry_id, raw, message)
            return
        self.processed += 1
        await self.redis.xack(self.keys.inbox, self.keys.inbox_group, entry_id)
        if not outcome.applied:
            await self._ignored(message, outcome)

    async def _ignored(self, message: Any, outcome: Outcome) -> None:
        kind = getattr(message, "kind", "?")
        log.info("ignored %s for run %s: %s", kind, outcome.run_id, outcome.reason)
        event = {
            "type": "event.ignored",
            "run_id": outcome.run_id,
            "at": clock.now(),
            "data": {
                "kind": kind,
                "reason": outcome.reason,
                "node_id": getattr(message, "node_id", None),
            },
        }
        await self.redis.publish(self.keys.events_channel, dumps(event))

    async def _count_failure(self, entry_id: bytes, raw: bytes, message: Any) -> None:
        attempts_key = f"{self.keys.inbox}:attempts"  # hash: entry id -> failures
        attempts = await self.redis.hincrby(attempts_key, entry_id, 1)
        if attempts < self.settings.max_inbox_attempts:
            return
        reason = f"handling failed {attempts} times"
        await self._dead_letter("inbox", raw, reason, entry_id)
        await self.redis.hdel(attempts_key, entry_id)
        run_id = getattr(message, "run_id", None)
        if run_id:
            await self._fail_poisoned_run(run_id, reason)

    async def _fail_poisoned_run(self, run_id: str, reason: str) -> None:
        from graph_core.events import CancelRequested

        log.error("run %s: an event kept failing (%s); failing the run", run_id, reason)
        with contextlib.suppress(Exception):
            await self.processor.process(
                CancelRequested(run_id=run_id, reason=f"poison event: {reason}", actor="dispatcher")
            )
        _ = ErrorInfo  # failure detail is in the dead letter and the run's history

    async def _dead_letter(
        self, source: str, raw: bytes, reason: str, entry_id: bytes | None
    ) -> None:
        log.warning("dead-lettered a %s message: %s", source, reason)
        await self.redis.xadd(
            self.keys.deadletter,
            {"source": source, "reason": reason, "raw": raw[:65536], "at": str(clock.now())},
            maxlen=10_000,
            approximate=True,
        )
        if entry_id is not None:
            await self.redis.xack(self.keys.inbox, self.keys.inbox_group, entry_id)

    # --- timers, approvals, recovery ----------------------------------------------------

    async def _timer_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now_ms = int(clock.now() * 1000)
            moved = await self._move_timers(
                keys=[self.keys.timers, self.keys.inbox], args=[now_ms, 100]
            )
            if moved:
                continue
            nxt = await self.redis.zrange(self.keys.timers, 0, 0, withscores=True)
            wait = 0.5 if not nxt else max(0.0, min(0.5, nxt[0][1] / 1000 - clock.now()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

    async def _approval_loop(self, stop: asyncio.Event) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.approvals_channel)
        try:
            while not stop.is_set():
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if msg is None or msg.get("type") != "message":
                    continue
                await self._approval_published(msg["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
                await pubsub.aclose()

    async def _approval_published(self, raw: bytes) -> None:
        try:
            approval = parse_approval(raw, self.settings.max_message_bytes)
        except MessageError as e:
            await self._dead_letter("approvals", raw, str(e), None)
            return
        # Every dispatcher hears a publish; only one copy goes into the durable inbox.
        digest = hashlib.sha256(raw).hexdigest()
        first = await self.redis.set(
            f"{self.keys.approvals_channel}:seen:{digest}", 1, nx=True, ex=600
        )
        if first:
            await self.redis.xadd(self.keys.inbox, {"m": approval.model_dump_json().encode()})

    async def _reclaim_loop(self, stop: asyncio.Event) -> None:
        idle_ms = int(self.settings.claim_idle_s * 1000)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), timeout=max(1.0, self.settings.claim_idle_s / 3)
                )
            if stop.is_set():
                return
            reply = await self.redis.xautoclaim(
                self.keys.inbox, self.keys.inbox_group, self.consumer, idle_ms, "0-0", count=100
            )
            entries = reply[1] if reply else []
            live = [(eid, f) for eid, f in entries if f]
            if live:
                log.info("reclaimed %d inbox entries left pending by another dispatcher", len(live))
                await self._handle_batch(live)


def _run_hint(fields: dict[bytes, bytes]) -> str:
    """Group entries by run without a full parse (a cheap substring look)."""
    raw = fields.get(b"m", b"")
    i = raw.find(b'"run_id":"')
    if i < 0:
        return ""
    j = raw.find(b'"', i + 10)
    return raw[i + 10 : j].decode(errors="replace")
