"""Status enums and the named sets that group them."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ACTIVE_NODE",
    "TERMINAL_RUN",
    "NodeStatus",
    "RunStatus",
]


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_RUN = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class NodeStatus(StrEnum):
    PENDING = "pending"  # never activated in this run
    QUEUED = "queued"  # a job is enqueued for (visit, attempt)
    RUNNING = "running"  # a worker reported it started (informational)
    WAITING = "waiting"  # paused for an approval
    RETRY_SCHEDULED = "retry_scheduled"  # failed; a durable timer re-enqueues it
    DELAYED = "delayed"  # a delay node: a durable timer completes it when due
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"  # routing did not reach it this time (dead path)
    CANCELLED = "cancelled"


# Statuses in which a node holds a live token of the run.
ACTIVE_NODE = frozenset(
    {
        NodeStatus.QUEUED,
        NodeStatus.RUNNING,
        NodeStatus.WAITING,
        NodeStatus.RETRY_SCHEDULED,
        NodeStatus.DELAYED,
    }
)
