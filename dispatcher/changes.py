"""The change set of one transition, as apply.lua reads it: one JSON array, so redis-py
frames one argument instead of 40-70 (see dispatcher/apply.lua for the layout)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import orjson

from dispatcher.queue import job_write
from graph_core.events import (
    CHILD_CANCEL_ACTOR,
    CancelChild,
    CancelNode,
    CancelRequested,
    DropTimer,
    EnqueueNode,
    FinishRun,
    PauseForApproval,
    ReleaseWait,
    ReopenRun,
    ScheduleTimer,
    StartChild,
    TimerFired,
    child_end,
    history_values,
)
from graph_core.keys import Keys, RunKeys
from graph_core.messages import SubmitRequest, dumps, encode_inbox
from graph_core.state import RunRecord, Transition
from graph_core.status import TERMINAL_RUN

__all__ = ["StateWrites", "new_stamp", "pack_changes", "state_writes"]


def new_stamp() -> str:
    """A random stamp for a run's meta hash, written with every write of the run record.

    The revision alone cannot tell two states apart after Redis lost writes (a restart with
    ``appendfsync everysec``, a failover to a lagging replica): the run can be back at R-1
    and be moved to R again by another dispatcher, with other content. An apply expects the
    stamp the state it was computed from carried, so a state known from before the loss
    conflicts instead of matching on the revision."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class StateWrites:
    """The records a change set writes, keyed as a ``RedisView`` keys them, as the exact
    text stored: what the dispatcher's run cache takes over once the apply succeeded."""

    run: str  # the run record
    # the record ``run`` is the text of: the transition's, which nothing changes once it
    # is applied (the run cache keeps it; the outcome and tracing read it)
    record: RunRecord
    rev: int  # the revision the apply sets
    stamp: str  # the stamp the apply sets (``new_stamp``)
    nodes: dict[str, str]
    joins: dict[tuple[str, int], str]  # '' deletes the field (no arrivals left)
    loops: dict[int, str]
    active_add: dict[str, int]
    active_remove: list[str]


def state_writes(t: Transition, run: RunRecord) -> StateWrites:
    """The records ``t`` writes (``run``: its run record), serialized once, with a new stamp."""
    return StateWrites(
        run=run.dump().decode(),
        record=run,
        rev=run.rev,
        stamp=new_stamp(),
        nodes={nid: rec.dump().decode() for nid, rec in t.nodes.items()},
        joins=t.joins,
        loops={i: loop.model_dump_json() for i, loop in t.loops.items()},
        active_add=t.active_add,
        active_remove=sorted(t.active_remove),
    )


def pack_changes(
    keys: Keys,
    t: Transition,
    run: RunRecord,
    now_ms: int,
    ack: str | None,
    retention_s: int,
    declared: list[str],
    writes: StateWrites | None = None,
) -> bytes:
    """The change set as one JSON array for apply.lua: redis-py frames one argument
    instead of 40-70. Only strings and flat lists of strings: numbers go as strings
    (cjson would turn them into doubles), stored values as the exact JSON text they
    are stored as. ``writes``: ``state_writes(t, run)``, if the caller has it already.

    ``declared``: the script's KEYS, its first 13 the run's keys and indexes. The other keys
    the change touches are added to it (the script names every key it touches): the inbox
    (14), arq's abort set (15), then the jobs' keys, queues and wake lists, once each,
    which the change set gives by their index."""
    w = writes if writes is not None else state_writes(t, run)
    shard = keys.shard_for(run.run_id)
    declared += (shard.inbox, shard.abort)
    declare = _Declare(declared)
    finished = run.status in TERMINAL_RUN and any(isinstance(a, FinishRun) for a in t.actions)
    score = str(now_ms)
    nodes: list[str] = []
    for nid, raw in w.nodes.items():
        nodes += (nid, raw)
    outputs = _output_fields(t)
    joins: list[str] = []
    for (n, i), signals in w.joins.items():
        joins += (RunKeys.join_field(n, i), signals)
    loops: list[str] = []
    for i, raw in w.loops.items():
        loops += (str(i), raw)
    active_add: list[str] = []
    for nid, visit in w.active_add.items():
        active_add += (nid, str(visit))
    history: list[str] = []  # each event's HISTORY_FIELDS values, one event after another
    for h in t.history:
        history += history_values(h)
    jobs: list[str] = []
    timers: list[str] = []
    waits: list[str] = []
    releases: list[str] = []
    aborts: list[str] = []
    dropped: list[str] = []
    inbox: list[str] = _inbox_messages(t, run, finished)
    for a in t.actions:
        if isinstance(a, EnqueueNode):
            job = job_write(
                keys,
                run.run_id,
                run.graph_id,
                run.graph_version,
                a,
                now_ms,
                run.trace,
                run.priority,
            )
            jobs += job.argv(declare)
        elif isinstance(a, ScheduleTimer):
            # whole ms, rounded up: a timer never fires before it is due
            due_ms = math.ceil(a.due_at * 1000)
            timers += (_timer_member(run.run_id, a).decode(), str(due_ms))
        elif isinstance(a, DropTimer):
            dropped.append(_timer_member(run.run_id, a).decode())
        elif isinstance(a, PauseForApproval):
            waits += (a.node_id, a.token)
        elif isinstance(a, ReleaseWait):
            releases.append(a.node_id)
        elif isinstance(a, CancelNode):
            aborts.append(keys.job_id(run.run_id, a.node_id, a.visit, a.attempt, a.item))
    return orjson.dumps(
        [
            w.run,
            str(w.rev),
            run.run_id,
            score,
            keys.shard_for(run.run_id).events_channel,
            str(retention_s if finished else 0),
            keys.inbox_group,
            ack or "",
            nodes,
            outputs,
            joins,
            loops,
            active_add,
            w.active_remove,
            history,
            jobs,
            timers,
            waits,
            releases,
            aborts,
            w.stamp,
            dropped,
            "1" if any(isinstance(a, ReopenRun) for a in t.actions) else "",
            inbox,
            # the published events' start: the run id, which their stream entries leave out
            '{"run_id":' + dumps(run.run_id).decode() + ",",
            keys.publish_command,  # SPUBLISH to the shard's channel, sharded
        ]
    )


class _Declare:
    """Adds a key to a script's KEYS (once) and gives its index there, as text. Only the
    keys it added are looked up: the jobs' keys, queues and wake lists are none of the run's
    keys and indexes the list starts with."""

    __slots__ = ("index", "keys")

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.index: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        i = self.index.get(key)
        if i is None:
            self.keys.append(key)
            i = self.index[key] = str(len(self.keys))
        return i


def _inbox_messages(t: Transition, run: RunRecord, finished: bool) -> list[str]:
    """Messages the apply adds to the inbox: child runs submitted and cancelled, and a
    finished child run's end, for its parent."""
    messages: list[str] = []
    for a in t.actions:
        if isinstance(a, StartChild):
            submit = SubmitRequest(
                graph_id=a.graph_id,
                graph_version=a.graph_version,
                input=a.input,
                run_id=a.run_id,
                parent=a.parent,
                priority=run.priority,  # a child run goes as fast as its parent
            )
            messages.append(encode_inbox(submit).decode())
        elif isinstance(a, CancelChild):
            cancel = CancelRequested(run_id=a.run_id, reason=a.reason, actor=CHILD_CANCEL_ACTOR)
            messages.append(encode_inbox(cancel).decode())
    if finished and run.parent is not None:
        ended = child_end(run.parent, run.run_id, run.status.value, run.output, run.error)
        messages.append(encode_inbox(ended).decode())
    return messages


def _output_fields(t: Transition) -> list[str]:
    """The outputs hash's writes (field, value, ...; '' deletes): outputs, and map items."""
    outputs: list[str] = []
    for (n, v), o in t.outputs.items():
        outputs += (RunKeys.output_field(n, v), dumps(o).decode())
    for (n, v), items in t.item_inputs.items():
        for i, item in enumerate(items):
            outputs += (RunKeys.item_field(n, v, i, "in"), dumps(item).decode())
    for (n, v, i), o in t.item_outputs.items():
        outputs += (RunKeys.item_field(n, v, i, "out"), dumps(o).decode())
    for (n, v), total in t.items_dropped.items():
        for i in range(total):
            outputs += (RunKeys.item_field(n, v, i, "in"), "")
            outputs += (RunKeys.item_field(n, v, i, "out"), "")
    return outputs


def _timer_member(run_id: str, a: ScheduleTimer | DropTimer) -> bytes:
    """A timer's member in the timers zset: the inbox message it becomes when due (the
    same fields give the same bytes, so a timer can be dropped by what scheduled it)."""
    return encode_inbox(
        TimerFired(
            run_id=run_id,
            timer=a.timer,
            node_id=a.node_id,
            visit=a.visit,
            attempt=a.attempt,
            item=a.item,
        )
    )
