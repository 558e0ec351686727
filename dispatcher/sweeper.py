"""The sweeper: finds live nodes whose job is gone and hands them back to the engine.

State and queue are written by one script, so they only disagree when something outside
relaygraph removed a job (an unstarted arq job expiring after a day, a Redis that lost its
last second of writes under ``appendfsync everysec``, an operator deleting keys). A node that
is queued, whose job, arq in-progress key and lease are all missing, gets a ``LeaseExpired``
for its attempt: the engine treats it like a lost worker and enqueues a new attempt. A report
that was already on its way wins (the later event is fenced off), so the worst case is one
extra run of a handler, never a lost node. A job for a finished run needs no sweeping: the
worker's fence drops it.

It also drops from arq's abort set the cancelled jobs' ids that nobody will take off it (a job
that ended before its abort was seen), once they are ``ABORT_KEEP_MS`` old.
"""

from __future__ import annotations

import logging
from typing import Any

from dispatcher.queue import ABORT_KEEP_MS, IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX
from graph_core import clock
from graph_core.events import LeaseExpired
from graph_core.keys import Keys, ShardKeys
from graph_core.messages import encode_inbox
from graph_core.state import NodeRecord
from graph_core.status import NodeStatus, RunStatus

__all__ = ["sweep", "trim_aborts"]

log = logging.getLogger("relaygraph.dispatcher")

BATCH = 200


async def trim_aborts(redis: Any, shard: ShardKeys) -> int:
    """Drop a shard's abort set's entries older than ``ABORT_KEEP_MS``; how many went."""
    cutoff = int(clock.now() * 1000) - ABORT_KEEP_MS
    return int(await redis.zremrangebyscore(shard.abort, "-inf", cutoff))


async def sweep(redis: Any, keys: Keys, grace_s: float, shard: ShardKeys | None = None) -> int:
    """Check every live run (of ``shard``; on one server, of the fleet) once; return how
    many nodes were handed back."""
    repaired = 0
    shard = shard or keys.shard(0)
    for status in (RunStatus.RUNNING, RunStatus.WAITING):
        cursor = 0
        while True:
            cursor, entries = await redis.zscan(
                shard.runs_by_status(status.value), cursor, count=BATCH
            )
            for raw_run_id, _score in entries:
                repaired += await _sweep_run(redis, keys, raw_run_id.decode(), grace_s)
            if cursor == 0:
                break
    return repaired


async def _sweep_run(redis: Any, keys: Keys, run_id: str, grace_s: float) -> int:
    rk = keys.run(run_id)
    active = await redis.hkeys(rk.active)
    if not active:
        return 0
    raws = await redis.hmget(rk.nodes, active)
    now = clock.now()
    repaired = 0
    for raw_node, raw in zip(active, raws, strict=True):
        if raw is None:
            continue
        rec = NodeRecord.model_validate_json(raw)
        if rec.status != NodeStatus.QUEUED or (rec.started_at or now) > now - grace_s:
            continue
        node_id = raw_node.decode()
        jid = keys.job_id(run_id, node_id, rec.visits, rec.attempt)
        lease = encode_inbox(
            LeaseExpired(run_id=run_id, node_id=node_id, visit=rec.visits, attempt=rec.attempt)
        )
        pipe = redis.pipeline(transaction=False)
        pipe.exists(JOB_KEY_PREFIX + jid, IN_PROGRESS_KEY_PREFIX + jid)
        pipe.zscore(keys.shard_for(run_id).leases, lease)
        present, leased = await pipe.execute()
        if present or leased is not None:
            continue
        log.warning(
            "run %s: node %s has no job (visit %d attempt %d); re-running it",
            run_id,
            node_id,
            rec.visits,
            rec.attempt,
        )
        await redis.xadd(keys.shard_for(run_id).inbox, {"m": lease})
        repaired += 1
    return repaired
