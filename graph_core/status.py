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
    PAUSED = "paused"  # held by an operator: nothing new is enqueued until resume
    COMPENSATING = "compensating"  # failed or cancelled: undoing its completed nodes
    COMPENSATED = "compensated"  # every compensation ran
    COMPENSATION_FAILED = "compensation_failed"  # a compensation failed (the run's error)


TERMINAL_RUN = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.COMPENSATED,
        RunStatus.COMPENSATION_FAILED,
    }
)


class NodeStatus(StrEnum):
    PENDING = "pending"  # never activated in this run
    QUEUED = "queued"  # a job is enqueued for (visit, attempt)
    RUNNING = "running"  # a worker reported it started (informational)
    WAITING = "waiting"  # paused for an approval
    RETRY_SCHEDULED = "retry_scheduled"  # failed; a durable timer re-enqueues it
    DELAYED = "delayed"  # a delay node: a durable timer completes it when due
    HELD = "held"  # would be enqueued, but its run is paused (enqueued on resume)
    THROTTLED = "throttled"  # run views only: queued, its job held back by a fleet-wide limit
    COMPENSATING = "compensating"  # its compensation runs (a job, like an attempt)
    COMPENSATED = "compensated"  # its compensation completed
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
        NodeStatus.HELD,
    }
)
