"""What goes into the transition function (events) and what comes out (actions, history).

Events are also the dispatcher's inbox messages: pydantic models, versioned (``v``),
serialized with orjson. Actions are instructions the runtime performs idempotently.

History events (``HistoryEvent``, plus the ``event.ignored`` notices of ``ignored_event``)
are what outside services read on the events channel and in a run's history stream. Each
carries ``v`` = ``EVENT_VERSION``, the major version of that schema: it changes only with an
incompatible change (a key removed or renamed, a type or meaning changed), never for new
event types or new keys (docs/protocol.md, "Events").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CHILD_CANCEL_ACTOR",
    "EVENT_VERSION",
    "HISTORY_FIELDS",
    "Action",
    "ApprovalReceived",
    "CancelChild",
    "CancelNode",
    "CancelRequested",
    "ChildFinished",
    "DropTimer",
    "EnqueueNode",
    "ErrorInfo",
    "Event",
    "FailRequested",
    "FinishRun",
    "HistoryEvent",
    "LeaseExpired",
    "NodeReported",
    "ParentRef",
    "PauseForApproval",
    "PauseRequested",
    "ReleaseWait",
    "ReopenRun",
    "RerunRequested",
    "ResumeRequested",
    "RetryRequested",
    "RunSubmitted",
    "RunTrace",
    "ScheduleTimer",
    "StartChild",
    "TimerFired",
    "TimerKind",
    "child_end",
    "history_event",
    "history_json",
    "history_values",
    "ignored_event",
]

TimerKind = Literal["retry", "wait_timeout", "run_timeout", "delay", "compensate"]

# The major version of the event schema (history events and ``event.ignored``). Bump it
# only for an incompatible change: consumers skip events whose ``v`` they do not know.
EVENT_VERSION: Final = 1


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    v: Literal[1] = 1


class ErrorInfo(BaseModel):
    """A failure, as stored and shown: the error type and message, and where it happened."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    message: str
    node_id: str | None = None
    code: str | None = None  # relaygraph's own failure codes: max_visits, step_limit, ...
    retryable: bool = True

    def __str__(self) -> str:
        where = f" at node {self.node_id!r}" if self.node_id else ""
        return f"{self.type}{where}: {self.message}"


class RunTrace(BaseModel):
    """A traced run's span, as W3C Trace Context: kept in the run record, so that every job
    of the run names it as its parent whichever dispatcher enqueues the job, and the
    dispatcher that finishes the run records the span under these ids (docs/observability.md,
    "Tracing"). Made by a dispatcher with ``tracing = "otel"``; this module only holds it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    traceparent: str  # the run span: 00-<trace id>-<span id>-<flags>
    tracestate: str | None = None  # vendors' trace state, passed on from the submitter
    parent_span_id: str | None = None  # the submitter's span (16 hex digits); None: a root


class ParentRef(BaseModel):
    """Where a child run (a ``subgraph`` node's, or a map item's over a graph) reports back:
    the parent run, the node and its visit and attempt (and item), and how deep it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    node_id: str
    visit: int = Field(ge=1)
    attempt: int = Field(ge=1)
    item: int | None = Field(default=None, ge=0)
    depth: int = Field(default=1, ge=1)  # 1: a child of a top-level run


# --- events (inputs) ------------------------------------------------------------------


class RunSubmitted(_Msg):
    kind: Literal["submitted"] = "submitted"
    run_id: str
    graph_id: str
    graph_version: int
    input: Any = None
    idempotency_key: str | None = None
    trace: RunTrace | None = None  # the run's span, when the dispatcher traces runs
    parent: ParentRef | None = None  # a child run's parent
    # graph id -> version: the subgraphs' versions, fixed when the run starts
    pins: dict[str, int] = Field(default_factory=dict)
    priority: int = 0  # among a queue's ready jobs, those of higher priority go first


class NodeReported(_Msg):
    """A worker's report about one attempt of one visit of a node."""

    kind: Literal["reported"] = "reported"
    run_id: str
    node_id: str
    visit: int = Field(ge=1)
    attempt: int = Field(ge=1)
    status: Literal["completed", "waiting", "failed"]
    output: Any = None
    error: ErrorInfo | None = None
    worker: str | None = None
    item: int | None = Field(default=None, ge=0)  # a map node's item (its index)


class ApprovalReceived(_Msg):
    """An approval or rejection of a waiting node; ``token`` must match the wait's token."""

    kind: Literal["approval"] = "approval"
    run_id: str
    node_id: str
    decision: Literal["approve", "reject"]
    data: dict[str, Any] = Field(default_factory=dict)
    actor: str | None = None
    token: str | None = None
    comment: str | None = Field(default=None, max_length=4096)  # the decider's words


class TimerFired(_Msg):
    kind: Literal["timer"] = "timer"
    run_id: str
    timer: TimerKind
    node_id: str | None = None
    visit: int = 0
    attempt: int = 0
    item: int | None = Field(default=None, ge=0)  # a map item's retry


class CancelRequested(_Msg):
    kind: Literal["cancel"] = "cancel"
    run_id: str
    reason: str = "cancelled"
    actor: str | None = None


class PauseRequested(_Msg):
    """Hold the run: nothing new is enqueued and timers that fall due wait (until resume)."""

    kind: Literal["pause"] = "pause"
    run_id: str
    reason: str = "paused"
    actor: str | None = None


class ResumeRequested(_Msg):
    """Go on with a paused run: what it held is enqueued, held timers fire."""

    kind: Literal["resume"] = "resume"
    run_id: str
    actor: str | None = None


class RetryRequested(_Msg):
    """Go on with a failed run from its failed (and stopped) nodes, keeping what completed."""

    kind: Literal["retry"] = "retry"
    run_id: str
    actor: str | None = None


class ChildFinished(_Msg):
    """A child run ended: sent to its parent run (``run_id``) with the apply that ends it."""

    kind: Literal["child"] = "child"
    run_id: str
    node_id: str
    visit: int = Field(ge=1)
    attempt: int = Field(ge=1)
    item: int | None = Field(default=None, ge=0)
    child_run_id: str
    status: str
    output: Any = None
    error: ErrorInfo | None = None


class RerunRequested(_Msg):
    """Run a finished run again from ``from_node``: that node and everything downstream of
    it start afresh, what lies upstream is kept. ``input`` replaces the run's input when
    ``new_input`` is set."""

    kind: Literal["rerun"] = "rerun"
    run_id: str
    from_node: str
    input: Any = None
    new_input: bool = False
    actor: str | None = None


def child_end(
    parent: ParentRef,
    child_run_id: str,
    status: str,
    output: Any = None,
    error: ErrorInfo | None = None,
) -> ChildFinished:
    """The message that tells ``parent``'s run its child run ended."""
    return ChildFinished(
        run_id=parent.run_id,
        node_id=parent.node_id,
        visit=parent.visit,
        attempt=parent.attempt,
        item=parent.item,
        child_run_id=child_run_id,
        status=status,
        output=output,
        error=error,
    )


class LeaseExpired(_Msg):
    """A running attempt's lease lapsed: its worker died, hung, or ran past its deadline.

    The member of the leases zset *is* this message, so an expired lease moves into the
    inbox as it is. ``deadline`` is the attempt's start-to-close deadline (epoch seconds)."""

    kind: Literal["lease_expired"] = "lease_expired"
    run_id: str
    node_id: str
    visit: int = Field(ge=1)
    attempt: int = Field(ge=1)
    deadline: float | None = None
    item: int | None = Field(default=None, ge=0)  # a map node's item (its index)


class FailRequested(_Msg):
    """Fail a run from outside the graph (e.g. a poison event that kept failing)."""

    kind: Literal["fail"] = "fail"
    run_id: str
    reason: str
    code: str = "failed"
    actor: str | None = None


Event = Annotated[
    RunSubmitted
    | NodeReported
    | ApprovalReceived
    | TimerFired
    | CancelRequested
    | PauseRequested
    | ResumeRequested
    | RetryRequested
    | RerunRequested
    | LeaseExpired
    | FailRequested
    | ChildFinished,
    Field(discriminator="kind"),
]

# --- actions (outputs) ----------------------------------------------------------------


class EnqueueNode(_Msg):
    """Start one attempt of one visit of a node on a worker queue."""

    action: Literal["enqueue"] = "enqueue"
    node_id: str
    visit: int
    attempt: int
    queue: str
    timeout_s: float | None = None
    parent: str | None = None
    compensate: bool | None = None  # True: run the node's compensation, not the node
    item: int | None = None  # a map node's item (its index): run the map's inner node
    type: str | None = None  # the handler type the job runs (fleet-wide limits per type)


class ScheduleTimer(_Msg):
    action: Literal["timer"] = "timer"
    timer: TimerKind
    due_at: float
    node_id: str | None = None
    visit: int = 0
    attempt: int = 0
    item: int | None = None


class PauseForApproval(_Msg):
    """Take the wait lock for (node, visit) with ``token``."""

    action: Literal["pause"] = "pause"
    node_id: str
    visit: int
    token: str


class ReleaseWait(_Msg):
    action: Literal["release"] = "release"
    node_id: str


class CancelNode(_Msg):
    """Tell workers that any attempt of this visit should stop (its report will be ignored)."""

    action: Literal["cancel_node"] = "cancel_node"
    node_id: str
    visit: int
    attempt: int
    item: int | None = None  # one item of a map node


class FinishRun(_Msg):
    action: Literal["finish"] = "finish"
    status: Literal["completed", "failed", "cancelled", "compensated", "compensation_failed"]


class ReopenRun(_Msg):
    """A finished run goes on (a retry): its keys must not expire any more."""

    action: Literal["reopen"] = "reopen"


class DropTimer(_Msg):
    """Remove a timer that can no longer matter (its node was stopped)."""

    action: Literal["drop_timer"] = "drop_timer"
    timer: TimerKind
    node_id: str | None = None
    visit: int = 0
    attempt: int = 0
    item: int | None = None


class StartChild(_Msg):
    """Submit a child run (the parent's apply writes its submission to the inbox)."""

    action: Literal["start_child"] = "start_child"
    run_id: str  # the child's
    graph_id: str
    graph_version: int | None = None  # None: the latest when the child is submitted
    input: Any = None
    parent: ParentRef


CHILD_CANCEL_ACTOR: Final = "parent"  # the actor of a cancel a parent run sends its child


class CancelChild(_Msg):
    """Cancel a child run (its parent stopped the node that waits for it)."""

    action: Literal["cancel_child"] = "cancel_child"
    run_id: str  # the child's
    reason: str


Action = (
    EnqueueNode
    | ScheduleTimer
    | DropTimer
    | ReopenRun
    | PauseForApproval
    | ReleaseWait
    | CancelNode
    | FinishRun
    | StartChild
    | CancelChild
)


class HistoryEvent(BaseModel):
    """One entry of a run's history stream (also published on the events channel, with the
    run's ``run_id`` in front: dispatcher/changes.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = EVENT_VERSION
    type: str  # e.g. node.completed, run.failed
    at: float
    node_id: str | None = None
    visit: int | None = None
    attempt: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)


#: The fields of a history stream entry, in order: one per key of the event's envelope but
#: ``run_id`` (the stream's key names the run), each holding that key's JSON text. The
#: stream stores the names once per node of up to 100 entries, so an entry costs the
#: values alone (docs/protocol.md, "History").
HISTORY_FIELDS: Final = ("v", "type", "at", "node_id", "visit", "attempt", "data")
_FIELD_NAMES: Final = frozenset(f.encode() for f in HISTORY_FIELDS)
# orjson writes datetimes, dataclasses and subclasses of str, int, dict and list its own
# way; with these options it refuses them instead, and pydantic's JSON form is used
_PLAIN_ONLY: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
# Entries written before the fields above hold the whole published JSON in one field.
_LEGACY_FIELD: Final = b"e"


def history_values(event: HistoryEvent) -> list[str]:
    """The JSON texts of ``event``'s keys, in ``HISTORY_FIELDS`` order: what apply.lua
    stores as the event's stream entry and joins into the JSON it publishes."""
    dumps = orjson.dumps
    try:  # the fields as they are: JSON types already, as the engine emits them
        data = dumps(event.data, option=_PLAIN_ONLY)
    except TypeError:  # anything else (a set, a model, a datetime): pydantic's JSON form
        data = dumps(event.model_dump(mode="json")["data"])
    return [
        dumps(event.v).decode(),
        dumps(event.type).decode(),
        dumps(event.at).decode(),
        dumps(event.node_id).decode(),
        dumps(event.visit).decode(),
        dumps(event.attempt).decode(),
        data.decode(),
    ]


def history_json(run_id: str, fields: Mapping[bytes, bytes]) -> bytes:
    """The JSON text of the event that one entry of run ``run_id``'s history stream holds
    (``XRANGE``'s field -> value mapping), key for key the text that was published on the
    events channel. Reads entries of both layouts: one field per key, and the whole JSON
    in field ``e``."""
    legacy = fields.get(_LEGACY_FIELD)
    if legacy is not None:
        return legacy
    parts = [b'{"run_id":', orjson.dumps(run_id)]
    for name, value in fields.items():
        # a name of its own (a newer version's key) is quoted properly, not trusted
        if name in _FIELD_NAMES:
            key = b'"' + name + b'"'
        else:
            key = orjson.dumps(name.decode(errors="backslashreplace"))
        parts += (b",", key, b":", value)
    parts.append(b"}")
    return b"".join(parts)


def history_event(run_id: str, fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The event that one entry of run ``run_id``'s history stream holds (``history_json``,
    parsed). ``orjson.JSONDecodeError`` if the entry is not one relaygraph wrote."""
    event = orjson.loads(history_json(run_id, fields))
    if not isinstance(event, dict):
        raise orjson.JSONDecodeError("a history entry is not a JSON object", "", 0)
    return event


def ignored_event(
    run_id: str | None, at: float, kind: str, reason: str | None, node_id: str | None
) -> dict[str, Any]:
    """The ``event.ignored`` notice a dispatcher publishes (never stored in a history) when
    a well-formed message changed nothing: which ``kind`` of message, and why."""
    return {
        "v": EVENT_VERSION,
        "type": "event.ignored",
        "run_id": run_id,
        "at": at,
        "data": {"kind": kind, "reason": reason, "node_id": node_id},
    }
