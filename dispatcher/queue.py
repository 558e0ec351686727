"""The queue layer: how a node job is laid out for arq (the only module that knows).

The dispatcher enqueues inside its apply script (atomically with the state change), so it
writes arq's layout itself: the job under ``arq:job:<id>`` and the id in the queue's zset.
Swapping the queue library means changing this module and the worker's ``app``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from graph_core.events import EnqueueNode, RunTrace
from graph_core.keys import Keys
from graph_core.messages import PRIORITY_STEP_MS, JobPayload, encode_arq_job, wake_token

__all__ = ["ABORT_KEEP_MS", "ABORT_KEY", "JobWrite", "job_write"]

# arq's fixed key names (arq.constants); arq does not namespace them.
JOB_KEY_PREFIX: Final = "arq:job:"
IN_PROGRESS_KEY_PREFIX: Final = "arq:in-progress:"
ABORT_KEY: Final = "arq:abort"
JOB_EXPIRES_MS: Final = 86_400_000  # arq's default: an unstarted job expires after a day
# How long a cancelled job's id stays in arq's abort set: a running job's worker sees it
# within a tenth of a second and takes it off; a queued job is fenced off by its node record
# (and finishing a job does not look), so what is older than this is left over.
ABORT_KEEP_MS: Final = 600_000


@dataclass(frozen=True, slots=True)
class JobWrite:
    job_key: str
    queue_key: str
    job_id: str
    job: bytes
    expires_ms: int
    wake_key: str
    wake_token: str
    score_offset_ms: int = 0  # taken off the enqueue time: the run's priority

    def argv(self, declare: Callable[[str], str]) -> list[str]:
        """The write as apply.lua reads it: eight strings (numbers as decimal text). The
        keys go into the script's KEYS: ``declare`` adds one and gives its index there."""
        return [
            declare(self.job_key),
            declare(self.queue_key),
            self.job_id,
            self.job.decode(),
            str(self.expires_ms),
            declare(self.wake_key) if self.wake_key else "0",
            self.wake_token,
            str(self.score_offset_ms),
        ]


def job_write(
    keys: Keys,
    run_id: str,
    graph_id: str,
    graph_version: int,
    action: EnqueueNode,
    now_ms: int,
    trace: RunTrace | None = None,
    priority: int = 0,
) -> JobWrite:
    """``trace``: the run's span (a traced run), the parent of the attempt's span;
    ``priority``: the run's (its jobs sort before those of lower-priority runs)."""
    payload = JobPayload(
        run_id=run_id,
        graph_id=graph_id,
        graph_version=graph_version,
        node_id=action.node_id,
        visit=action.visit,
        attempt=action.attempt,
        timeout_s=action.timeout_s,
        parent=action.parent,
        compensate=action.compensate,
        item=action.item,
        type=action.type,
        traceparent=trace.traceparent if trace is not None else None,
        tracestate=trace.tracestate if trace is not None else None,
    )
    jid = keys.job_id(run_id, action.node_id, action.visit, action.attempt, action.item)
    shard = keys.shard_for(run_id)  # the job's keys, queue and wake list share the run's slot
    return JobWrite(
        job_key=JOB_KEY_PREFIX + jid,
        queue_key=shard.queue(action.queue),
        job_id=jid,
        job=encode_arq_job(payload, now_ms),
        expires_ms=JOB_EXPIRES_MS,
        wake_key=shard.wake(action.queue),
        wake_token=wake_token(jid, graph_id, graph_version),
        score_offset_ms=priority * PRIORITY_STEP_MS,
    )
