"""An arq worker that is woken when work arrives, claims and loads a job in one round
trip, finishes it with its report in another, and rides out Redis restarts.

* Wake-ups: arq polls its queue every ``poll_delay``: either latency (0.5 s by default) or
  idle CPU (a tight poll). With every enqueue the dispatcher pushes the job's id on
  ``Keys.wake(queue)`` (in the same script); this worker blocks on that list and claims the
  ids it pops directly, without reading the queue. It also polls the queue itself when no
  id comes for ``fallback_s``, when it was full, and at least every ``fallback_s`` under
  load, so a lost or trimmed wake-up only delays a job, never strands it.
* Claims: one script per job, pipelined for the ids of one wake-up: set arq's in-progress
  key unless it exists (the job still queued and due), read the job, count the try, take
  it off arq's abort set, and read what the job's fence needs (the run record and the
  node's record), so the job starts after one round trip instead of five.
* Finishing: the job function returns the writes that belong with its end (the report on
  the inbox, the lease to drop), and one script writes them with arq's clean-up.
* Outages: a Redis error in a poll is logged and the loop waits and polls again; jobs
  already running carry on (their finish retries), and the dispatcher's leases cover any
  attempt lost meanwhile.
* Stopping: ``close`` runs to its end however often it is called or cancelled, waits for
  every job's finish, and hands back to the queue the jobs claimed but never started.

arq's job layout, try counter, abort set, health check and signals are arq's; ``run_job`` is
replaced (by ``_run_claimed``) and never called, and ``close`` is arq's made robust.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Final

from arq.connections import create_pool, log_redis_info
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)
from arq.cron import CronJob
from arq.jobs import SerializationError, deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Function, Retry, Worker
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from graph_core.errors import RelaygraphError
from graph_core.keys import Keys, ShardKeys
from graph_core.messages import parse_job_id, parse_wake_token
from graph_core.redis_url import check_not_cluster, is_redis_client_fault
from graph_core.resp import fast_packing, record_layout, restore_seeds, script_pipeline
from worker.limits import ACQUIRE, RELEASE, SERVER_MS_LUA, Gate
from worker.preload import LATEST_LUA
from worker.runner import redis_unavailable

__all__ = ["Claim", "ClaimPlan", "ClaimPlanner", "Finish", "WakingWorker", "refuse_cluster"]

# a job id, and its graph and queue score if a wake-up named them
_Wanted = tuple[str, tuple[str, int] | None, int | None]

logger = logging.getLogger("relaygraph.worker")

# Claim a job: only if it is still queued and due and nobody runs it; then count the try
# (arq's retry key), read the job and the fence's records and, for a job planned before the
# claim (``ClaimPlan``), write its lease and read what it will read. Reads come first; the
# first write is the in-progress key, set only if it is not (so that a claim that loses the
# race has written nothing), and a write that fails after it (a try counter that is not a
# count, a lease key of the wrong type) undoes the claim's writes, so a failed claim leaves
# no claim behind. Fleet-wide limits are taken after the claim, apart (worker/limits.py).
# KEYS: 1 in-progress, 2 queue, 3 job, 4 try counter, 5 arq's abort set; then, for a job
# that names its run (ARGV[4], its node, is not ''), 6 the run's meta, 7 its nodes, 8 the
# leases, 9 its outputs. Only keys the script may touch: none is a placeholder.
# ARGV[7]: the score the job's wake-up named: a job still at it is due (apply.lua scored it
# with the server's clock when it was queued), so the claim reads the clock only otherwise.
# ARGV[8]: a planned map item's field of its input in the outputs hash ('': none); the
# nodes the job will read follow from ARGV[9]. The reply: score, job, tries, aborted, run,
# node, leased, then the reads' record and output pairs, then the item's input if asked.
_CLAIM = (
    LATEST_LUA
    + SERVER_MS_LUA
    + """
-- a job polled from the queue (no wake-up score) is often one another worker runs: a
-- claim of it that will fail fails before its reads
if ARGV[7] == '' and redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then return false end
if (ARGV[7] == '' or tonumber(score) ~= tonumber(ARGV[7]))
    and tonumber(score) > server_ms() then
  return false
end
local job = redis.call('GET', KEYS[3])
local aborted = redis.call('ZSCORE', KEYS[5], ARGV[1])
local out = {score, job, 0, 0, false, false, 0}
if ARGV[4] ~= '' then
  out[5] = redis.call('HGET', KEYS[6], 'run')
  out[6] = latest(KEYS[7], KEYS[9], ARGV, 9, out, ARGV[4])
  if ARGV[8] ~= '' then out[#out + 1] = redis.call('HGET', KEYS[9], ARGV[8]) end
end
if not redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2], 'NX') then return false end
-- arq's try counter: made with arq's TTL, or counted up
if redis.call('SET', KEYS[4], 1, 'EX', 88400, 'NX') then
  out[3] = 1
else
  local tries = redis.pcall('INCR', KEYS[4])
  if type(tries) == 'table' then
    redis.call('DEL', KEYS[1])
    return redis.error_reply('ERR the try counter ' .. KEYS[4] .. ' is not a count')
  end
  out[3] = tries
end
if ARGV[5] ~= '' then
  local added = redis.pcall('ZADD', KEYS[8], ARGV[6], ARGV[5])
  if type(added) == 'table' then
    redis.call('DEL', KEYS[1])
    if out[3] == 1 then redis.call('DEL', KEYS[4]) else redis.call('DECR', KEYS[4]) end
    return redis.error_reply('ERR writing the lease in ' .. KEYS[8] .. ': ' .. added['err'])
  end
  out[7] = 1
end
if aborted then out[4] = redis.call('ZREM', KEYS[5], ARGV[1]) end  -- the last write
return out
"""
)
# A job's end, as arq's finish_job would write it, plus the job's own writes: its report on
# the inbox (ARGV[4]), the removal of its leases (ARGV[6] of them, from ARGV[7]) and leases
# to lapse now (the rest). ARGV[2]: 'done' (the job is over: its keys go), 'again' (it
# stays queued for another delivery, ARGV[3] ms from now by the server's clock if given),
# or 'unclaimed' (it never started: queued again, its try not counted), which does nothing
# unless this worker's claim (ARGV[5]) still holds the job. arq's abort set is left alone:
# a worker takes the jobs it aborts off it, and the dispatcher's housekeeping drops the
# entries of jobs that ended before their abort was seen (``ABORT_KEEP_MS``). The job's
# running slots, if a limit gave it any, are freed apart (worker/limits.py ``RELEASE``).
# KEYS: 1 in-progress, 2 try counter, 3 job, 4 queue, 5 inbox, 6 leases.
_FINISH = (
    SERVER_MS_LUA
    + """
if ARGV[2] == 'unclaimed' and redis.call('GET', KEYS[1]) ~= ARGV[5] then return 0 end
if ARGV[4] ~= '' then redis.call('XADD', KEYS[5], '*', 'm', ARGV[4]) end
local removed = 6 + tonumber(ARGV[6])
for i = 7, removed do redis.call('ZREM', KEYS[6], ARGV[i]) end
for i = removed + 1, #ARGV do redis.call('ZADD', KEYS[6], 0, ARGV[i]) end
if ARGV[2] == 'done' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 1
end
redis.call('DEL', KEYS[1])
if ARGV[2] == 'unclaimed' then
  local tries = tonumber(redis.call('GET', KEYS[2]) or '')
  if tries and tries > 0 then redis.call('DECR', KEYS[2]) end
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[4], 'XX', server_ms() + tonumber(ARGV[3]), ARGV[1])
end
return 1
"""
)
# Move jobs (ARGV[2..]) still in the queue (KEYS[1]) to ARGV[1] ms from now, server clock.
_DEFER = (
    SERVER_MS_LUA
    + """
local at = server_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', at, ARGV[i]) end
return 1
"""
)
_SHAS: Final = {
    s: hashlib.sha1(s.encode()).hexdigest() for s in (_CLAIM, _FINISH, ACQUIRE, RELEASE)
}
_OUTAGE_BACKOFF_S: Final = (0.05, 0.1, 0.25, 0.5, 1.0)
# A finish (and a limit's release) is tried again this long while Redis cannot serve: longer
# than a failover on the test cluster (~3 s), and than a job lease, after which the job would
# run again anyway; short enough for a stopping worker.
_FINISH_PATIENCE_S: Final = 10.0
_FINISH_BACKOFF_MAX_S: Final = 1.0
# What a round trip may fail with: a Redis error, a cluster client's refusal, or redis-py
# failing inside itself after a node died (an AttributeError: `_round_trip_failed`).
_ROUND_TRIP: Final = (RedisError, RedisClusterException, AttributeError)
_FINISH_TIMEOUT_S: Final = 5.0  # per try: arq's pool has no socket timeout of its own
_ABORT_CHECK_S: Final = 0.1  # how often a busy worker looks for aborted jobs
_CLAIM_FAILED_DEFER_MS: Final = 60_000  # a job whose claim failed waits this long to retry
# runs whose graph a worker remembers (``_graph_of_run``), and jobs it claimed (``_start``)
_RUN_GRAPHS_KEPT: Final = 4096
_HAND_BACK_WAIT_S: Final = 5.0  # how long a stop waits for a claim round trip it cut off


class _Unrunnable(Exception):
    """A claimed job that cannot run (expired, aborted, unknown function, out of tries)."""


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    """What a claim does besides claiming, for a job whose graph the worker has cached (the
    wake-up named it): write the attempt's lease, and read the records and latest outputs
    of the nodes the job will read, so the handler can start right after the claim."""

    lease_key: str
    lease: bytes  # the LeaseExpired message
    lease_expiry_ms: int
    deadline: float | None  # epoch seconds: the lease is never renewed past it
    timeout_s: float | None  # the node's, as the lease assumed it
    outputs_key: str
    reads: list[str]  # node ids
    item_field: str = ""  # a map item's: its input's field in the outputs hash


# (job id, its parts, (graph id, version)) -> a plan, or None to claim plainly
ClaimPlanner = Callable[[str, tuple[str, str, int, int], tuple[str, int]], ClaimPlan | None]


@dataclass(frozen=True, slots=True)
class Claim:
    """A job this worker claimed, with what the claim script read."""

    job_id: str
    score: int
    job: bytes | None  # arq's job envelope; None if it expired or was deleted
    tries: int  # deliveries so far, this one included
    aborted: bool
    run: bytes | None  # the run record, for a relaygraph job id (None: missing)
    node: bytes | None  # the job node's record
    loaded: bool  # False: not a relaygraph job id, run and node were not read
    plan: ClaimPlan | None = None
    leased: bool = False  # the claim wrote plan.lease
    latest: list[Any] | None = None  # plan.reads' records and latest outputs, as pairs
    item_read: bool = False  # the claim read plan.item_field ...
    item: bytes | None = None  # ... and found this (None: no such field)
    slots: tuple[str, ...] = ()  # the running zsets a limit gave it a slot in


@dataclass(frozen=True, slots=True)
class Finish:
    """What a job function wants written with its job's clean-up (one transaction)."""

    stream: str | None = None  # XADD {"m": message} to this stream
    message: bytes | None = None
    lease_key: str | None = None  # ZREM leases from this zset
    leases: tuple[bytes, ...] = ()
    lapse: tuple[bytes, ...] = ()  # leases (in lease_key) to make lapse now


async def refuse_cluster(redis: Any) -> None:
    """``ClusterUnsupported`` on a Redis Cluster node, before the worker writes anything (an
    ``INFO`` refused or failing says nothing: the worker's own commands will). The
    dispatcher's twin is ``dispatcher.connect.refuse_cluster`` (neither imports the other)."""
    if is_cluster_client(redis):
        return  # a cluster-aware client: fine (check_layout asks for the sharded layout)
    try:
        info = await redis.info("cluster")
    except (ResponseError, RedisConnectionError, RedisTimeoutError, OSError):
        return
    check_not_cluster(info)


def _round_trip_failed(e: BaseException) -> bool:
    """Whether ``e`` (one of `_ROUND_TRIP`) is the round trip's failure; an AttributeError
    raised anywhere but in redis-py's own code is a bug, to be raised."""
    return not isinstance(e, AttributeError) or is_redis_client_fault(e)


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, AsyncRedisCluster | SyncRedisCluster)


async def close_client(client: Any) -> None:
    """Close a client and its connections (a cluster client's ``aclose`` takes no flag)."""
    if is_cluster_client(client):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


async def check_layout(redis: Any, keys: Keys) -> None:
    """``graph_core.resp.record_layout``, with the worker's rule for a reply that says
    Redis cannot serve now."""
    await record_layout(
        redis, keys, lambda e: isinstance(e, ResponseError) and redis_unavailable(e)
    )


class WakingWorker(Worker):
    def __init__(
        self,
        *args: Any,
        keys: Keys,
        queue: str,
        fallback_s: float,
        planner: ClaimPlanner | None = None,
        **kwargs: Any,
    ):
        """``queue``: the queue's name; its jobs wait in every shard's queue of that name
        (one on one server: arq's ``queue_name``)."""
        super().__init__(*args, **kwargs)
        self.keys = keys
        self.planner = planner
        self.shards = [keys.shard(k) for k in range(max(1, keys.shards))]
        self.queue = queue
        self.queues = [shard.queue(queue) for shard in self.shards]
        self.wake_keys = [shard.wake(queue) for shard in self.shards]
        self.wake_key = self.wake_keys[0]
        # the queue's limit scope (limits per queue name); a running slot lives as long as
        # an in-progress key, renewed with it
        self.queue_scope = "queue:" + queue
        self.gate = Gate(keys, self.queue_scope)
        self._slots: dict[str, list[str]] = {}  # job id -> the scopes it holds a slot in
        # a rate limit held a claim back: poll again at this monotonic time (0: none)
        self._retry_throttled_at = 0.0
        self.throttled = 0  # claims a limit held back
        self.fallback_s = fallback_s
        self.wakeups = 0
        self.outages = 0
        self._slot_freed = asyncio.Event()
        self._blmpop = True  # BLMPOP (Redis 7+); BLPOP on older servers
        # sharded: each shard's pending blocking pop of wake-ups, and those popped but not
        # taken yet (``_pop_sharded``)
        self._waiting: dict[str, asyncio.Future[list[bytes]]] = {}
        self._spare: list[bytes] = []
        self._last_poll = 0.0
        self._last_abort_check = 0.0
        # Claims made but not yet running, and claim round trips a stop interrupted: close()
        # hands their jobs back to the queue instead of leaving them to their leases.
        self._unstarted: dict[str, Claim] = {}
        self._interrupted: list[asyncio.Future[list[Claim | None]]] = []
        self._closing: asyncio.Future[None] | None = None
        self._claim_token = secrets.token_hex(8)  # the in-progress keys of this worker's claims
        self._run_graphs: OrderedDict[str, tuple[str, int]] = OrderedDict()  # run -> graph
        self._claimed_here: OrderedDict[str, None] = OrderedDict()  # the latest job ids

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        fast_packing(self._pool)  # redis-py's packing costs more than the rest of a claim
        if not is_cluster_client(self.pool):  # arq's pipelines INFO, which a cluster refuses
            await log_redis_info(self.pool, lambda *a: None)
        await refuse_cluster(self.pool)
        await check_layout(self.pool, self.keys)
        self.ctx["redis"] = self.pool
        await self.pool.script_load(_CLAIM)
        await self.gate.refresh(self.pool)
        if self.on_startup:
            await self.on_startup(self.ctx)
        failures = 0
        woken: list[_Wanted] | None = None  # from a wake-up; None: poll the queue
        while True:
            try:
                if woken is None:
                    await self._poll_iteration()
                else:
                    await self._start(woken)
                    await self._housekeeping()
                if self.burst and await self._burst_done():
                    return
                woken = await self._wait_for_work()
                failures = 0
            except _ROUND_TRIP as e:  # restarting, failing over...
                if not _round_trip_failed(e):
                    raise
                restore_seeds(self.pool, ClusterNode)  # a cluster client may have lost them all
                woken = None
                self.outages += 1
                delay = _OUTAGE_BACKOFF_S[min(failures, len(_OUTAGE_BACKOFF_S) - 1)]
                failures += 1
                logger.warning(
                    "queue %s: Redis error (%s); polling again in %.2fs", self.queue_name, e, delay
                )
                await asyncio.sleep(delay)

    async def _poll_iteration(self) -> None:
        """Read the queue for due jobs and start them (the fallback to wake-ups)."""
        self._last_poll = time.monotonic()
        free = self.max_jobs - self.job_counter
        if self.allow_pick_jobs and free > 0:
            count = min(self.queue_read_limit, free)
            if self.burst and self.max_burst_jobs >= 0:
                count = min(count, self.max_burst_jobs - self._jobs_started())
            if count > 0:
                pipe = self.pool.pipeline(transaction=False)
                for queue in self.queues:  # each shard's, oldest first
                    pipe.zrangebyscore(
                        queue,
                        min=float("-inf"),
                        max=timestamp_ms(),
                        start=self._queue_read_offset,
                        num=count,
                        withscores=len(self.queues) > 1,
                    )
                read = await pipe.execute()
                if len(self.queues) == 1:
                    job_ids = read[0]
                else:  # the most urgent of every shard's: by score, as one queue would give
                    due = sorted((score, j) for got in read for j, score in got)
                    job_ids = [j for _, j in due[:count]]
                await self.start_jobs(job_ids)
        await self._housekeeping(force=True)

    async def _housekeeping(self, *, force: bool = False) -> None:
        """Cancel aborted jobs (at most every ``_ABORT_CHECK_S`` unless forced), forget
        finished tasks, and write arq's health check when it is due."""
        now = time.monotonic()
        if self.allow_abort_jobs and (force or now - self._last_abort_check >= _ABORT_CHECK_S):
            self._last_abort_check = now
            await self._cancel_aborted_jobs()
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                if not t.cancelled():  # cancelled: the worker is stopping
                    t.result()  # an error in _run_claimed is a bug: surface it
        await self.heart_beat()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's entry point for polled ids: claim and start them (see ``_start``)."""
        await self._start([(j.decode(), None, None) for j in job_ids])

    async def _start(self, wanted: list[_Wanted]) -> None:
        """Claim as many jobs as there are free slots, in one round trip, and start the
        claimed ones; a failed claim frees its slot."""
        if not self.allow_pick_jobs:
            return
        # a wake-up naming a job this worker claimed already (read from the queue before
        # its wake-up came) is stale: skipped without a claim
        recent = self._claimed_here
        unique = {
            w[0]: w
            for w in wanted
            if w[0] not in self.tasks and (w[1] is None or w[0] not in recent)
        }
        todo = list(unique.values())[: max(0, self.max_jobs - self.job_counter)]
        if not todo:
            return
        for _ in todo:  # reserve the slots first: a claim must never outrun them
            await self.sem.acquire()
            self.job_counter += 1
        claiming = asyncio.ensure_future(self._claim_all(todo))
        try:
            claims = await asyncio.shield(claiming)
        except BaseException as e:
            for _ in todo:
                self._release_sem_dec_counter_on_complete()
            if isinstance(e, asyncio.CancelledError):  # stopping: the claims may be made
                claiming.add_done_callback(_retrieved)
                self._interrupted.append(claiming)
            raise
        for claim in claims:
            if claim is None:  # running elsewhere, finished, or deferred
                self._release_sem_dec_counter_on_complete()
                continue
            recent[claim.job_id] = None
            if len(recent) > _RUN_GRAPHS_KEPT:
                recent.popitem(last=False)
            self._unstarted[claim.job_id] = claim  # a task cancelled unstarted never runs
            task = self.loop.create_task(self._run_claimed(claim))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[claim.job_id] = task

    def _claim_call(
        self,
        job_id: str,
        graph: tuple[str, int] | None,
        score: int | None = None,
        *,
        plain: bool = False,
    ) -> tuple[list[str], list[str], ClaimPlan | None]:
        """The claim script's keys and arguments for one job, and its plan if any. ``graph``
        and ``score``: what the job's wake-up named (its graph, its queue score). ``plain``:
        without the run's reads (a claim whose reads failed is made again so)."""
        shard = self._shard_of(job_id)
        keys = [
            in_progress_key_prefix + job_id,
            shard.queue(self.queue),
            job_key_prefix + job_id,
            retry_key_prefix + job_id,
            shard.abort,
        ]
        args = [job_id, str(int(self.in_progress_timeout_s * 1000)), self._claim_token]
        # the run's keys: meta, nodes, leases, outputs; the node, the lease and its expiry
        run_keys: list[str] = []
        run_args = ["", "", ""]
        reads: list[str] = []
        item_field = ""
        plan = None
        parts = None if plain else parse_job_id(job_id)
        if parts is not None:  # a polled job of a run seen before: its graph is known
            graph = self._graph_of_run(parts[0], graph)
        try:
            rk = self.keys.run(parts[0]) if parts is not None else None
        except RelaygraphError:
            rk = None
        if parts is not None and rk is not None:
            run_keys = [rk.meta, rk.nodes, shard.leases, rk.outputs]
            run_args[0] = parts[1]
            if self.planner is not None and graph is not None:
                try:
                    plan = self.planner(job_id, parts, graph)
                except Exception:  # a planning bug must not stop the worker: claim plainly
                    logger.exception("planning the claim of job %s failed", job_id)
            if plan is not None:
                run_keys[2:] = [plan.lease_key, plan.outputs_key]
                run_args[1:] = [plan.lease.decode(), str(plan.lease_expiry_ms)]
                reads, item_field = plan.reads, plan.item_field
        woken = "" if score is None else str(score)
        return [*keys, *run_keys], [*args, *run_args, woken, item_field, *reads], plan

    def _shard_of(self, job_id: str) -> ShardKeys:
        """The shard of a job's run (its id names it); the first for any other job."""
        if not self.keys.sharded:
            return self.shards[0]
        parts = parse_job_id(job_id)
        return self.keys.shard_for(parts[0]) if parts is not None else self.shards[0]

    def _graph_of_run(self, run_id: str, graph: tuple[str, int] | None) -> tuple[str, int] | None:
        """``graph`` (a wake-up's), remembered for the run; or the graph remembered for it,
        so that the claim of a job read from the queue (which names no graph) is planned
        too. A run's graph never changes; the oldest runs are forgotten first."""
        known = self._run_graphs
        if graph is not None:
            known[run_id] = graph
            known.move_to_end(run_id)
            if len(known) > _RUN_GRAPHS_KEPT:
                known.popitem(last=False)
            return graph
        return known.get(run_id)

    async def _claim_all(self, wanted: list[_Wanted]) -> list[Claim | None]:
        await self.gate.refresh(self.pool)  # at most once a second: one HKEYS
        calls = [self._claim_call(job_id, graph, score) for job_id, graph, score in wanted]
        replies = await self._evalsha_all([(keys, args) for keys, args, _ in calls])
        # A claim that failed reading the run (a corrupt record, say) is made again without
        # those reads: the job then reads the run itself and reports what is wrong.
        bare = [
            i
            for i, r in enumerate(replies)
            if isinstance(r, Exception) and not redis_unavailable(r) and calls[i][1][3]
        ]
        if bare:
            for i in bare:
                job_id, _, score = wanted[i]
                logger.warning(
                    "claiming job %s failed (%s); claiming it plainly", job_id, replies[i]
                )
                calls[i] = self._claim_call(job_id, None, score, plain=True)
            try:
                again = await self._evalsha_all([calls[i][:2] for i in bare])
            except (RedisConnectionError, RedisTimeoutError) as e:
                # The first round's claims stand: start them; these wait for a later poll.
                logger.warning("claiming jobs plainly failed: %s", e)
                again = [None] * len(bare)
            for i, reply in zip(bare, again, strict=True):
                replies[i] = reply
        failed: list[str] = []
        for i, reply in enumerate(replies):
            if not isinstance(reply, Exception):
                continue
            replies[i] = None  # the script wrote nothing: not claimed
            job_id = calls[i][1][0]
            if redis_unavailable(reply):  # busy, read-only, out of memory: a later poll
                logger.warning("claiming job %s: Redis cannot serve now: %s", job_id, reply)
                continue
            failed.append(job_id)
            logger.error(
                "claiming job %s failed (tried again in %.0fs): %s",
                job_id,
                _CLAIM_FAILED_DEFER_MS / 1000,
                reply,
            )
        if failed:
            await self._defer(failed)
        claims = [
            _claim(job_id, reply, loaded=bool(args[3]), plan=plan)
            for (job_id, *_), reply, (_, args, plan) in zip(wanted, replies, calls, strict=True)
        ]
        return await self._take_limits(claims) if self.gate.on else claims

    async def _take_limits(self, claims: list[Claim | None]) -> list[Claim | None]:
        """Take the fleet-wide limits of the claims whose scopes have any; hand back to
        their queue (try not counted) the jobs a limit holds back, and those whose limits
        could not be checked (a key of the wrong type: moved back as a failed claim is)."""
        limited = [
            (i, c, scopes)
            for i, c in enumerate(claims)
            if c is not None
            and c.job is not None
            and not c.aborted
            and (scopes := self.gate.scopes(c.job))
        ]
        if not limited:
            return claims
        slot_ms = int(self.in_progress_timeout_s * 1000)  # a running slot lapses with the claim
        calls = [
            self.gate.acquire_call(
                c.job_id, scopes, slot_ms, self._shard_of(c.job_id).wake(self.queue)
            )
            for _, c, scopes in limited
        ]
        try:
            replies: list[Any] = await self._evalsha_all(calls, ACQUIRE)
        except _ROUND_TRIP as e:  # lost: hand the claims back
            if not _round_trip_failed(e):
                raise
            replies = [e] * len(calls)
        back: list[Claim] = []
        failed: list[str] = []
        for (i, claim, scopes), reply in zip(limited, replies, strict=True):
            if reply is None:
                self._slots[claim.job_id] = scopes
                claims[i] = replace(claim, slots=self.gate.running_keys(scopes))
                continue
            back.append(claim)
            claims[i] = None
            if isinstance(reply, Exception):
                lost = isinstance(reply, RedisConnectionError | RedisTimeoutError)
                if not (lost or redis_unavailable(reply)):  # a key of the wrong type, say
                    failed.append(claim.job_id)
                logger.error("checking the limits of job %s failed: %s", claim.job_id, reply)
            else:
                self._note_throttled(reply)
        await asyncio.gather(
            *(
                self._settle(
                    self._finish(c.job_id, done=False, unclaim=True, writes=_claimed_lease(c))
                )
                for c in back
            )
        )
        if failed:
            await self._defer(failed)
        # a job a release woke while it was still claimed here: its wake-up found it taken
        pool: Any = self.pool
        held = [c.job_id for c in back if c.job_id not in failed]
        try:
            if held and (woken := await self.gate.unheld(pool, held)):
                pipe = pool.pipeline(transaction=False)
                for job_id in woken:
                    pipe.rpush(self._shard_of(job_id).wake(self.queue), job_id)
                await pipe.execute()
        except (RedisError, RedisClusterException) as e:  # best effort: a poll finds them
            logger.warning("checking held-back jobs failed: %s", e)
        return claims

    def _note_throttled(self, reply: Any) -> None:
        """A claim a limit held back (``{'throttled', scope, wait ms}``): when the wait is
        a rate's, poll again then (a running slot's is woken by the finish that frees it)."""
        if not (isinstance(reply, list) and reply and reply[0] == b"throttled"):
            return
        self.throttled += 1
        wait_ms = int(reply[2]) if len(reply) > 2 else 0
        if wait_ms > 0:
            at = time.monotonic() + wait_ms / 1000
            if self._retry_throttled_at == 0.0 or at < self._retry_throttled_at:
                self._retry_throttled_at = at

    async def _defer(self, job_ids: list[str]) -> None:
        """Move jobs whose claim failed out of the way of polls (which read the queue's oldest
        jobs first), to be tried again later. Best effort: they stay queued either way."""
        pool: Any = self.pool
        by_queue: dict[str, list[str]] = {}
        for job_id in job_ids:
            by_queue.setdefault(self._shard_of(job_id).queue(self.queue), []).append(job_id)
        try:
            for queue, ids in by_queue.items():
                await pool.eval(_DEFER, 1, queue, _CLAIM_FAILED_DEFER_MS, *ids)
        except (RedisError, RedisClusterException) as e:
            logger.warning("could not move jobs %s back in their queue: %s", job_ids, e)

    async def _evalsha_all(
        self, calls: list[tuple[list[str], list[str]]], source: str = _CLAIM
    ) -> list[Any]:
        """Run a script (the claim's unless told) once per call, pipelined: each call's
        reply, or the error it got (one job's error spares the others). A lost connection
        raises. If the server lost the script (a restart or SCRIPT FLUSH), it is loaded and
        those calls run again."""
        sha = _SHAS[source]
        replies = await self._pipelined(sha, calls)
        redo = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if redo:
            await self.pool.script_load(source)
            again = await self._pipelined(sha, [calls[i] for i in redo])
            for i, reply in zip(redo, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, RedisConnectionError | RedisTimeoutError):
                raise reply
        return replies

    async def _pipelined(self, sha: str, calls: list[tuple[list[str], list[str]]]) -> list[Any]:
        pipe = script_pipeline(self.pool)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    def _job_call(self, claim: Claim) -> tuple[Function, tuple[Any, ...], dict[str, Any], int]:
        """The function and arguments of a claimed job; ``_Unrunnable`` if there are none."""
        if claim.job is None:
            raise _Unrunnable("expired")
        try:
            name, args, kwargs, _, enqueue_ms = deserialize_job_raw(
                claim.job, deserializer=self.job_deserializer
            )
        except SerializationError as e:
            raise _Unrunnable(f"cannot be deserialized: {e}") from e
        function = self.functions.get(name)
        if claim.aborted:
            raise _Unrunnable("aborted before start")
        if function is None or isinstance(function, CronJob):
            raise _Unrunnable(f"function {name!r} not found")
        max_tries = function.max_tries or self.max_tries
        if claim.tries > max_tries:
            raise _Unrunnable(f"max {max_tries} tries exceeded")
        return function, args, kwargs, enqueue_ms

    async def _run_claimed(self, claim: Claim) -> None:
        """arq's ``run_job`` for a job already claimed and read, finishing in one write.

        A lease the claim wrote is dropped on every path where the job function did not
        return its own ``Finish`` (which names it)."""
        job_id = claim.job_id
        self._unstarted.pop(job_id, None)
        claimed = _claimed_lease(claim)
        try:
            function, args, kwargs, enqueue_ms = self._job_call(claim)
            ctx = {
                **self.ctx,
                "job_id": job_id,
                "job_try": claim.tries,
                "enqueue_time": ms_to_datetime(enqueue_ms),
                "score": claim.score,
                "claim": claim,
            }
            coroutine = function.coroutine(ctx, *args, **kwargs)
        except Exception as e:  # expired, aborted, unknown, out of tries, or malformed
            logger.warning("job %s: %s", job_id, e)
            self.jobs_failed += 1
            await self._settle(self._finish(job_id, done=True, writes=claimed))
            return
        self.job_tasks[job_id] = task = self.loop.create_task(coroutine)
        try:
            result = await task
        except Retry as e:
            self.jobs_retried += 1
            requeue = e.defer_score or None
            await self._settle(self._finish(job_id, done=False, writes=claimed, requeue_ms=requeue))
        except asyncio.CancelledError:
            if job_id in self.aborting_tasks:  # aborted: the job is over, nothing reported
                self.aborting_tasks.discard(job_id)
                self.jobs_failed += 1
                await self._settle(self._finish(job_id, done=True, writes=claimed))
            else:  # the worker is stopping: the job goes back on its queue
                # Not re-raised (as arq's run_job does not): arq's close() gathers these
                # tasks and must get past them to finish its own shutdown.
                self.jobs_retried += 1
                await self._settle(self._finish(job_id, done=False, writes=claimed))
        except Exception:
            logger.exception("job %s failed", job_id)
            self.jobs_failed += 1
            await self._settle(self._finish(job_id, done=True, writes=claimed))
        else:
            self.jobs_complete += 1
            writes = result if isinstance(result, Finish) else claimed
            await self._settle(self._finish(job_id, done=True, writes=writes))
        finally:
            self.job_tasks.pop(job_id, None)

    async def _settle(self, finish: Coroutine[Any, Any, None]) -> None:
        """Carry ``finish`` (a ``_finish``) to its end even if this task is cancelled
        meanwhile (a second stop signal): a job left half-finished would wait for its lease
        to lapse. Bounded: ``_finish`` gives up after ``_FINISH_PATIENCE_S``."""
        finishing = asyncio.ensure_future(finish)
        while not finishing.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(finishing)
        if not finishing.cancelled():  # cancelled: the loop itself is being torn down
            finishing.result()

    async def close(self) -> None:
        """arq's ``close``, made to run to its end once, however often it is called or
        cancelled: stop the loop, cancel running jobs (they go back on their queue), wait for
        their finishes, hand back claims that never started, delete the health check, run
        ``on_shutdown`` (which stops the lease heartbeat) and close the pool."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if not self._handle_signals or (self.main_task is not None and not self.main_task.done()):
            self.handle_sig(signal.SIGUSR1)  # stop the loop and cancel the running jobs
        self._stop_pending_pops()  # a wake-up popped now is left to a poll
        if not self._pool:
            return
        try:
            if self.main_task is not None and not self.main_task.done():
                # Cancelled just now: let it end, so that a claim it cut off is known below.
                await asyncio.wait([self.main_task], timeout=_HAND_BACK_WAIT_S)
            # First, while their claims (which nothing renews) still hold: every job task
            # is cancelled by now, so one that has not started never will.
            await self._hand_back_unstarted()
            outcomes = await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    logger.error("a job task failed while stopping", exc_info=outcome)
        finally:
            try:
                with contextlib.suppress(RedisError, TimeoutError):
                    await asyncio.wait_for(
                        self.pool.delete(self.health_check_key), _FINISH_TIMEOUT_S
                    )
                if self.on_shutdown:
                    await self.on_shutdown(self.ctx)
            finally:
                await close_client(self.pool)
                self._pool = None

    async def _hand_back_unstarted(self) -> None:
        """Put back on their queue the jobs claimed but never started: those of a claim
        round trip a stop interrupted, and those whose task was cancelled before it ran.
        Their tries are not counted. A job that could not have run (aborted, expired, out of
        tries...) ends instead, as it would have had it started."""
        for claiming in self._interrupted:
            await asyncio.wait([claiming], timeout=_HAND_BACK_WAIT_S)
            if not claiming.done() or claiming.cancelled() or claiming.exception() is not None:
                continue  # nothing is known to be claimed; any claim lapses with its lease
            for claim in claiming.result():
                if claim is not None:
                    self._unstarted[claim.job_id] = claim
        self._interrupted.clear()
        unstarted = {
            job_id: claim
            for job_id, claim in self._unstarted.items()
            if (task := self.tasks.get(job_id)) is None or task.done() or task.cancelling()
        }  # a task neither done nor cancelled still runs, and ends its job itself
        for job_id in unstarted:
            del self._unstarted[job_id]
        outcomes = await asyncio.gather(
            *(self._hand_back(claim) for claim in unstarted.values()), return_exceptions=True
        )
        for claim, outcome in zip(unstarted.values(), outcomes, strict=True):
            if isinstance(outcome, Exception):  # the job is left to its in-progress key
                logger.error("handing job %s back failed", claim.job_id, exc_info=outcome)

    async def _hand_back(self, claim: Claim) -> None:
        lease = _claimed_lease(claim)
        try:
            self._job_call(claim)
        except _Unrunnable:
            end = self._finish(claim.job_id, done=True, writes=lease)
        else:
            end = self._finish(claim.job_id, done=False, unclaim=True, writes=lease)
        await self._settle(end)

    async def _finish(
        self,
        job_id: str,
        *,
        done: bool,
        unclaim: bool = False,
        writes: Finish | None = None,
        requeue_ms: int | None = None,
    ) -> None:
        """arq's ``finish_job`` plus the job's own writes, in one script. ``done``: the
        job is over (its keys go); otherwise it stays queued (``requeue_ms`` later) for
        another delivery, and ``unclaim`` (it never started) takes back the try its claim
        counted. Connection errors and timeouts are retried: every write here is idempotent,
        and a report written twice is ignored by the dispatcher."""
        shard = self._shard_of(job_id)
        keys = [  # every key the script may touch, named even where unused (a cluster)
            in_progress_key_prefix + job_id,
            retry_key_prefix + job_id,
            job_key_prefix + job_id,
            shard.queue(self.queue),
            (writes.stream if writes else None) or shard.inbox,
            (writes.lease_key if writes else None) or shard.leases,
        ]
        leases = writes.leases if writes and writes.lease_key else ()
        args: list[str | bytes] = [
            job_id,
            "done" if done else "unclaimed" if unclaim else "again",
            str(requeue_ms) if requeue_ms and not done else "",
            (writes.message if writes and writes.stream else None) or "",
            self._claim_token if unclaim else "",
            str(len(leases)),
            *leases,
            *(writes.lapse if writes and writes.lease_key else ()),
        ]
        scopes = self._slots.pop(job_id, None)  # a limit's running slots, if it took any
        ended = await self._eval_retried(_FINISH, keys, args, f"finishing job {job_id}")
        if ended is None:
            return  # the in-progress key, the lease and any running slot lapse
        if scopes and not (unclaim and ended == 0):  # 0: the claim is another worker's now
            free_keys, free_args = self.gate.release_call(job_id, scopes)
            what = f"freeing the running slots of job {job_id}"
            woken = await self._eval_retried(RELEASE, free_keys, free_args, what)
            if woken:
                await self._wake(scopes, woken)

    async def _wake(self, scopes: list[str], woken: list[Any]) -> None:
        """Push jobs held back by a limit on their queues' wake lists (RELEASE's reply:
        wake list, job id, scope position, ...). A popped job that is gone (cancelled while
        held back) wakes nobody: its scope is popped again, three times at most. Best
        effort: a job not woken is found by a poll."""
        pool: Any = self.pool
        try:
            for _ in range(3):
                popped = list(zip(woken[::3], woken[1::3], woken[2::3], strict=True))
                pipe = pool.pipeline(transaction=False)
                for _, job_id, _ in popped:
                    pipe.exists(job_key_prefix + job_id.decode())
                alive = await pipe.execute()
                pipe = pool.pipeline(transaction=False)
                for (wake, job_id, _), live in zip(popped, alive, strict=True):
                    if live:
                        pipe.rpush(wake, job_id)
                await pipe.execute()
                gone = [
                    scopes[int(n) - 1]
                    for (*_, n), live in zip(popped, alive, strict=True)
                    if not live
                ]
                if not gone:
                    return
                keys, args = self.gate.release_call("", gone)
                woken = await self._eval_retried(RELEASE, keys, args, "waking held-back jobs")
                if not woken:
                    return
        except (RedisError, RedisClusterException) as e:
            logger.warning("waking jobs a limit held back failed: %s", e)

    async def _eval_retried(self, source: str, keys: list[str], args: list[Any], what: str) -> Any:
        """Run a script whose writes are idempotent, trying again, backing off, while Redis
        cannot serve (a lost connection, a timeout, a failover: `redis_unavailable`) for up to
        ``_FINISH_PATIENCE_S``, so that a job's finish outlasts a failover instead of being
        lost to it (the job would then run again once its lease lapsed): its reply, or None
        once that time has passed (logged)."""
        pool: Any = self.pool  # redis-py 5 types its arguments narrower than it takes
        sha = _SHAS[source]
        deadline = time.monotonic() + _FINISH_PATIENCE_S
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(_FINISH_TIMEOUT_S):
                    try:
                        return await pool.evalsha(sha, len(keys), *keys, *args)
                    except NoScriptError:  # a restart or SCRIPT FLUSH: load it and go again
                        await pool.script_load(source)
                        return await pool.evalsha(sha, len(keys), *keys, *args)
            except Exception as e:
                if not (isinstance(e, TimeoutError) or redis_unavailable(e)):
                    raise
                delay = min(_FINISH_BACKOFF_MAX_S, 0.05 * 2**attempt)
                if time.monotonic() + delay > deadline:
                    logger.exception("%s failed (tried %d times)", what, attempt)
                    return None
                if attempt == 3:  # one line, not one a try
                    logger.warning("%s: Redis cannot serve (%s); trying until it can", what, e)
                restore_seeds(self.pool, ClusterNode)  # a cluster client may have lost them all
                await asyncio.sleep(delay)

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or not await self._queued():
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _queued(self) -> int:
        """Jobs waiting in this queue, in every shard."""
        pipe = self.pool.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zcard(queue)
        return sum(await pipe.execute())

    async def _cancel_aborted_jobs(self) -> None:
        """arq's, over every shard's abort set, without MULTI (which a cluster client
        refuses): cancel the running jobs whose abort was asked, and take them off."""
        pipe = self.pool.pipeline(transaction=False)
        for shard in self.shards:
            pipe.zrange(shard.abort, 0, -1)
        asked = await pipe.execute()
        for shard, ids in zip(self.shards, asked, strict=True):
            aborted = {i.decode() for i in ids} & self.job_tasks.keys()
            if not aborted:
                continue
            for job_id in aborted:
                self.job_tasks[job_id].cancel()
            self.aborting_tasks.update(aborted)
            await self.pool.zrem(shard.abort, *aborted)

    async def _wait_for_work(self) -> list[_Wanted] | None:
        """Block until work arrives: the jobs of a wake-up, or None to poll the queue."""
        free = self.max_jobs - self.job_counter
        if free <= 0:
            self._stop_pending_pops()  # a full worker takes no wake-up an idle one could
            # Full: taking wake-ups now would steal them from an idle worker. Wait for one
            # of our own jobs to finish (or the fallback), then poll: the queue gives the
            # most urgent jobs first (a run's priority), where wake-ups come in order.
            self._slot_freed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), timeout=self.fallback_s)
            return None
        now = time.monotonic()
        if now - self._last_poll >= self.fallback_s:
            return None  # busy on wake-ups: poll now and then for jobs that had none
        timeout = self.fallback_s
        if self._retry_throttled_at:  # a rate's next token: poll when it comes
            if now >= self._retry_throttled_at:
                self._retry_throttled_at = 0.0
                return None
            timeout = min(timeout, self._retry_throttled_at - now)
        return self._woken(await self._pop_wakeups(free, timeout))

    def _woken(self, tokens: list[bytes]) -> list[_Wanted] | None:
        """The jobs wake-up ``tokens`` name; None (poll the queue) for none, or for a token
        that is not a job id (an older dispatcher's)."""
        if not tokens:
            return None
        self.wakeups += 1
        wanted = [parse_wake_token(t.decode()) for t in tokens]
        if not all(parse_job_id(w[0]) for w in wanted):
            return None
        return wanted

    async def _pop_wakeups(self, count: int, timeout: float | None = None) -> list[bytes]:
        timeout = self.fallback_s if timeout is None else max(0.001, timeout)
        if len(self.wake_keys) > 1:
            return await self._pop_sharded(count, timeout)
        return await self._pop_one(self.wake_keys[0], count, timeout)

    async def _pop_one(self, key: str, count: int, timeout: float) -> list[bytes]:
        pool: Any = self.pool  # redis-py 5 types async results as Awaitable[T] | T
        if self._blmpop:
            try:
                got = await pool.blmpop(timeout, 1, key, direction="LEFT", count=count)
            except ResponseError as e:
                if "unknown command" not in str(e).lower():
                    raise
                self._blmpop = False  # Redis < 7
            else:
                return list(got[1]) if got else []
        got = await pool.blpop([key], timeout=timeout)
        return [got[1]] if got else []

    def _stop_pending_pops(self) -> None:
        """Cancel the shards' pending blocking pops (keeping what the finished ones got). A
        pop cancelled just as the server answered loses its wake-ups: a poll finds those."""
        for key, task in list(self._waiting.items()):
            del self._waiting[key]
            if not task.done():
                task.cancel()
            elif task.exception() is None:
                self._spare += task.result()

    async def _pop_sharded(self, count: int, timeout: float) -> list[bytes]:
        """Wake-ups from every shard's wake list: one blocking pop each (a cluster blocks
        on keys of one slot only), left pending across calls, so that what one pops after
        this call returns is taken by the next; and what comes beyond ``count`` is kept for
        the next call too (a wake-up dropped would leave its job to a poll)."""
        if len(self._spare) < count:
            for key in self.wake_keys:
                if key not in self._waiting:
                    pop = self._pop_one(key, count, self.fallback_s)
                    self._waiting[key] = asyncio.ensure_future(pop)
            await asyncio.wait(
                self._waiting.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        failed: list[BaseException] = []
        for key, task in list(self._waiting.items()):
            if task.done():
                del self._waiting[key]
                if task.exception() is not None:
                    failed.append(task.exception())  # type: ignore[arg-type]
                else:
                    self._spare += task.result()
        if failed and not self._spare:
            raise failed[0]  # Redis gone: the main loop waits and polls again
        got, self._spare = self._spare[:count], self._spare[count:]
        return got

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a future's error as seen (it is handled, or logged, where the future is used)."""
    if not future.cancelled():
        future.exception()


def _claimed_lease(claim: Claim) -> Finish | None:
    """The lease the claim wrote, as a job's end drops it; None if it wrote none."""
    plan = claim.plan if claim.leased else None
    return Finish(lease_key=plan.lease_key, leases=(plan.lease,)) if plan else None


def _claim(job_id: str, reply: Any, *, loaded: bool, plan: ClaimPlan | None) -> Claim | None:
    if not reply or (isinstance(reply, list) and reply[0] == b"throttled"):
        return None
    reply = list(reply)
    score, job, tries, aborted, run, node, leased = (reply + [None] * 7)[:7]
    item, item_read = None, False
    if plan is not None and plan.item_field and len(reply) > 7 + 2 * len(plan.reads):
        item, item_read = reply.pop(), True
    return Claim(
        job_id=job_id,
        score=int(float(score)),
        job=job,
        tries=int(tries),
        aborted=bool(aborted),
        run=run,
        node=node,
        loaded=loaded,
        plan=plan,
        leased=bool(leased),
        latest=reply[7:] if plan is not None else None,
        item_read=item_read,
        item=item,
    )
