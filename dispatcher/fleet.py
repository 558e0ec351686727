"""Fleet-wide gauges read from Redis when Prometheus scrapes: queue depths and the age of
their oldest waiting job, the inbox backlog, dead letters, timers, running attempts, runs by
status, registered workers (docs/observability.md lists them).

``FleetReader`` takes a snapshot in two or three round trips (a third when a graph version
is new to it); ``FleetCollector`` turns it into metric families for a
``prometheus_client`` registry. A dispatcher process registers the collector (workers do
not); any other process with a blocking Redis client can register it too. The scrape runs
in the exposition server's thread with a short socket timeout; when Redis cannot be read
the scrape still answers, with ``relaygraph_fleet_scrape_ok 0`` and no fleet gauges.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import ResponseError

from dispatcher.queue import IN_PROGRESS_KEY_PREFIX
from graph_core.keys import Keys
from graph_core.messages import PRIORITY_STEP_MS
from graph_core.status import RunStatus

__all__ = ["FleetCollector", "FleetReader", "FleetSnapshot", "QueueStats"]

log = logging.getLogger("relaygraph.metrics")

DEFAULT_QUEUE: Final = "default"  # the queue of a node without "queue" (as the engine uses)
OLDEST_SCAN: Final = 100  # jobs looked at per queue to find the oldest one not yet started

# Per queue (KEYS): its size and the score (enqueue time, ms, the server's clock) of its
# oldest job that no worker holds yet; a running job stays in arq's queue until it finishes,
# so the first ARGV[2] jobs by score are checked for an in-progress key. Reads only.
_QUEUE_STATS = """
local out = {}
for i, q in ipairs(KEYS) do
  local oldest = ''
  local ids = redis.call('ZRANGE', q, 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
  for j = 1, #ids, 2 do
    if redis.call('EXISTS', ARGV[1] .. ids[j]) == 0 then oldest = ids[j + 1]; break end
  end
  out[i] = {redis.call('ZCARD', q), oldest}
end
return out
"""


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int  # jobs in the queue: waiting, or running (arq keeps those until they finish)
    oldest_age_s: float  # of the oldest job not started (0: none among the first scanned)
    workers: int  # registered worker processes serving it


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    queues: dict[str, QueueStats]
    workers: int
    inbox_length: int
    inbox_pending: int
    inbox_oldest_pending_age_s: float
    inbox_lag: int | None  # entries no dispatcher read yet (Redis 7+; None: unknown)
    dead_letters: int
    timers: int
    running_attempts: int  # leases: attempts a live worker holds
    runs: dict[str, int] = field(default_factory=dict)  # status -> runs in its index


class FleetReader:
    """Reads ``FleetSnapshot``s with a blocking client; remembers the queues of each stored
    graph version (a stored version never changes), so a graph is parsed once."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        # redis-py 5 annotates results as ``Awaitable[T] | T``; typed as Any here.
        self.redis: Any = redis
        self.keys = keys
        self._script = redis.register_script(_QUEUE_STATS)
        self._graph_queues: dict[bytes, frozenset[str]] = {}
        self._lock = threading.Lock()  # scrapes may run in several server threads at once

    def read(self) -> FleetSnapshot:
        """The fleet's gauges now. Raises what the client raises."""
        with self._lock:
            return self._read()

    def _read(self) -> FleetSnapshot:
        keys = self.keys
        statuses = [s.value for s in RunStatus]
        shards = [keys.shard(k) for k in range(max(1, keys.shards))]  # one on one server
        server_time = self.redis.time()  # apart: a cluster client's pipelines refuse TIME
        pipe = self.redis.pipeline(transaction=False)
        pipe.hvals(keys.workers)
        pipe.hkeys(keys.graphs)
        pipe.xlen(keys.deadletter)
        for shard in shards:
            pipe.xlen(shard.inbox)
            pipe.xpending(shard.inbox, keys.inbox_group)
            pipe.xinfo_groups(shard.inbox)
            pipe.zcard(shard.timers)
            pipe.zcard(shard.leases)
            for status in statuses:
                pipe.zcard(shard.runs_by_status(status))
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and not _missing_stream(reply):
                raise reply
        worker_records, graph_fields, dead = replies[:3]
        per_shard = 5 + len(statuses)
        rows = [replies[3 + i * per_shard : 3 + (i + 1) * per_shard] for i in range(len(shards))]
        now_ms = int(server_time[0]) * 1000 + int(server_time[1]) // 1000
        serving = _serving(worker_records)
        names = sorted(serving.keys() | self._queues_of_graphs(graph_fields))
        lags = [_lag(row[2], keys.inbox_group) for row in rows]
        return FleetSnapshot(
            queues=self._queue_stats(names, serving, now_ms),
            workers=len(worker_records),
            inbox_length=sum(_int(row[0]) for row in rows),
            inbox_pending=sum(_pending_count(row[1]) for row in rows),
            inbox_oldest_pending_age_s=max(_pending_age(row[1], now_ms) for row in rows),
            inbox_lag=None if None in lags else sum(lag or 0 for lag in lags),
            dead_letters=int(dead),
            timers=sum(int(row[3]) for row in rows),
            running_attempts=sum(int(row[4]) for row in rows),
            runs={
                status: sum(int(row[5 + i]) for row in rows) for i, status in enumerate(statuses)
            },
        )

    def _queues_of_graphs(self, fields: list[bytes]) -> set[str]:
        new = [f for f in fields if f not in self._graph_queues]
        if new:
            raws = self.redis.hmget(self.keys.graphs, new)
            for name, raw in zip(new, raws, strict=True):
                self._graph_queues[name] = _queues_of(raw)
        present = set(fields)
        for gone in [f for f in self._graph_queues if f not in present]:
            del self._graph_queues[gone]
        return set().union(*self._graph_queues.values())

    def _queue_stats(
        self, names: list[str], serving: dict[str, int], now_ms: int
    ) -> dict[str, QueueStats]:
        if not names:
            return {}
        depths = dict.fromkeys(names, 0)
        oldest: dict[str, float] = {}
        for k in range(max(1, self.keys.shards)):  # a call per shard: one slot each
            shard = self.keys.shard(k)
            rows = self._script(
                keys=[shard.queue(n) for n in names], args=[IN_PROGRESS_KEY_PREFIX, OLDEST_SCAN]
            )
            for name, (depth, first) in zip(names, rows, strict=True):
                depths[name] += int(depth)
                if first:
                    oldest[name] = min(oldest.get(name, float("inf")), float(first))
        stats = {}
        for name in names:
            # a prioritized job's score is its enqueue time less priority x PRIORITY_STEP_MS;
            # a job deferred into the future has a negative wait: 0
            waited = now_ms - oldest[name] if name in oldest else 0.0
            if waited >= PRIORITY_STEP_MS:
                waited %= PRIORITY_STEP_MS
            age = max(0.0, waited / 1000)
            stats[name] = QueueStats(depths[name], age, serving.get(name, 0))
        return stats


def _queues_of(raw: bytes | None) -> frozenset[str]:
    try:
        nodes = orjson.loads(raw or b"{}").get("nodes") or []
        return frozenset(str(n.get("queue") or DEFAULT_QUEUE) for n in nodes)
    except (orjson.JSONDecodeError, AttributeError):  # not ours to judge here: skipped
        return frozenset()


def _int(reply: Any) -> int:
    return int(reply) if isinstance(reply, int) else 0  # an error: the stream is not there


def _missing_stream(error: Exception) -> bool:
    """XPENDING / XINFO on an inbox or group not created yet: nothing pending."""
    text = str(error)
    return isinstance(error, ResponseError) and ("NOGROUP" in text or "no such key" in text)


def _serving(records: list[bytes]) -> dict[str, int]:
    serving: dict[str, int] = {}
    for raw in records:
        try:
            queues = orjson.loads(raw).get("queues") or []
        except (orjson.JSONDecodeError, AttributeError):
            continue  # a malformed record is skipped, as `relaygraph run` skips it
        for q in queues:
            serving[str(q)] = serving.get(str(q), 0) + 1
    return serving


def _pending_count(pending: Any) -> int:
    return int(pending["pending"]) if isinstance(pending, dict) else 0


def _pending_age(pending: Any, now_ms: int) -> float:
    """Age of the oldest unacknowledged entry, from its id (the time it was added)."""
    if not isinstance(pending, dict) or not pending.get("min"):
        return 0.0
    oldest = pending["min"]
    added_ms = int((oldest.decode() if isinstance(oldest, bytes) else str(oldest)).split("-")[0])
    return max(0.0, (now_ms - added_ms) / 1000)


def _lag(groups: Any, group: str) -> int | None:
    if not isinstance(groups, list):
        return None
    for info in groups:
        name = info.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag = info.get("lag")
            return int(lag) if lag is not None else None
    return None


class FleetCollector(Collector):
    """Fleet gauges for a ``prometheus_client`` registry, read from Redis at every scrape.

    ``redis`` is a blocking client (``dispatcher.connect.connect_sync``), best with a short
    ``socket_timeout``: the scrape waits for it. A failure to read never fails the scrape.
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.reader = FleetReader(redis, keys)

    def describe(self) -> Iterable[Metric]:
        return []  # names are not checked against other collectors; collect() not run early

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            snap = self.reader.read()
        except Exception as e:  # a lost server, a timeout, a key of the wrong type
            log.warning("metrics: reading the fleet's gauges from Redis failed: %s", e)
            snap = None
        if snap is not None:
            yield from _families(snap)
        yield GaugeMetricFamily(
            "relaygraph_fleet_scrape_ok",
            "1 if the fleet gauges were read from Redis in this scrape, else 0.",
            value=1 if snap is not None else 0,
        )
        yield GaugeMetricFamily(
            "relaygraph_fleet_scrape_duration_seconds",
            "Time this scrape spent reading the fleet gauges from Redis.",
            value=time.perf_counter() - started,
        )


def _families(snap: FleetSnapshot) -> Iterator[Metric]:
    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"relaygraph_{name}", doc, value=value)

    depth = GaugeMetricFamily(
        "relaygraph_queue_depth", "Jobs in the queue (waiting or running).", labels=["queue"]
    )
    age = GaugeMetricFamily(
        "relaygraph_queue_oldest_job_age_seconds",
        "Age of the queue's oldest job no worker has started (0: none).",
        labels=["queue"],
    )
    workers = GaugeMetricFamily(
        "relaygraph_queue_workers",
        "Registered worker processes serving the queue.",
        labels=["queue"],
    )
    for name, q in snap.queues.items():
        depth.add_metric([name], q.depth)
        age.add_metric([name], q.oldest_age_s)
        workers.add_metric([name], q.workers)
    yield from (depth, age, workers)
    yield gauge("workers", "Registered worker processes.", snap.workers)
    yield gauge("inbox_length", "Entries in the inbox stream (read or not).", snap.inbox_length)
    yield gauge(
        "inbox_pending",
        "Inbox entries read by a dispatcher, not yet acknowledged.",
        snap.inbox_pending,
    )
    yield gauge(
        "inbox_oldest_pending_age_seconds",
        "Age of the oldest unacknowledged inbox entry (since it was added).",
        snap.inbox_oldest_pending_age_s,
    )
    if snap.inbox_lag is not None:
        yield gauge("inbox_lag", "Inbox entries no dispatcher has read yet.", snap.inbox_lag)
    yield gauge(
        "dead_letter_stream_length", "Entries in the dead-letter stream.", snap.dead_letters
    )
    yield gauge("timers", "Scheduled timers (retry backoffs, wait and run timeouts).", snap.timers)
    yield gauge(
        "running_attempts", "Node attempts a worker holds a lease for.", snap.running_attempts
    )
    runs = GaugeMetricFamily(
        "relaygraph_runs",
        "Runs in each status index (finished: within retention).",
        labels=["status"],
    )
    for status, n in snap.runs.items():
        runs.add_metric([status], n)
    yield runs
