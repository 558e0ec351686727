"""Run state records, the read-only ``StateView`` the transition function reads through, and
the ``Transition`` it returns (the state changes plus the actions and history)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from graph_core.events import Action, ErrorInfo, HistoryEvent, ParentRef, RunTrace
from graph_core.status import ACTIVE_NODE, NodeStatus, RunStatus

__all__ = [
    "JoinState",
    "LoopRecord",
    "MapState",
    "NodeRecord",
    "RunRecord",
    "StateView",
    "Transition",
    "WaitInfo",
]


class WaitInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str
    since: float
    visit: int
    prompt: Any = None


class JoinState(BaseModel):
    """Counters of one join input group, so an arrival costs O(1), not O(inputs)."""

    model_config = ConfigDict(extra="forbid")

    ready: int = 0  # inputs with at least one queued signal
    taken: int = 0  # inputs whose oldest queued signal is "taken"
    fired: bool = False  # the join already fired in the current generation
    trigger: str | None = None  # source of the latest taken arrival: the firing's trigger


class MapState(BaseModel):
    """A map node's visit: counters, and the items in flight (at most ``limit``), so an item
    costs O(max_concurrency), never O(items). Item inputs and results live in the run's
    outputs hash, one field each (graph_core.keys.RunKeys.item_field)."""

    model_config = ConfigDict(extra="forbid")

    total: int  # items in the list
    limit: int  # max_concurrency
    tolerated: int  # failed items tolerated (tolerated_failures, resolved for ``total``)
    next: int = 0  # items started so far: the index of the next item to start
    done: int = 0  # items completed
    failed: int = 0  # items failed for good
    # item index -> its current attempt; negative: a retry timer will start attempt -a
    running: dict[int, int] = Field(default_factory=dict)
    lost: dict[int, int] = Field(default_factory=dict)  # item -> attempts lost with a worker
    held: list[int] = Field(default_factory=list)  # items whose next attempt waits for resume
    children: dict[int, str] = Field(default_factory=dict)  # a map over a graph: child runs


class NodeRecord(BaseModel):
    """The state of one node in one run. Small: never grows with the run.

    Stored as JSON in the run's ``nodes`` hash with default-valued fields left out (it is
    written with most transitions: smaller is faster). Outside services read it raw:
    docs/protocol.md lists every field, and tests/docs checks that list against this one."""

    model_config = ConfigDict(extra="forbid")

    status: NodeStatus = NodeStatus.PENDING
    visits: int = 0  # visits begun
    attempt: int = 0  # attempt of the current visit
    last_ok_visit: int = 0  # the visit whose output is this node's latest output
    started_at: float | None = None
    finished_at: float | None = None
    error: ErrorInfo | None = None
    wait: WaitInfo | None = None
    trigger: str | None = None  # the node whose completion started the current visit
    backlog: int = 0  # activations waiting for the current visit to finish
    lost: int = 0  # attempts of the current visit whose worker was lost (lease lapsed)
    # join bookkeeping per input group (topology.join_groups) of two or more inputs
    joins: dict[str, JoinState] = Field(default_factory=dict)
    # parallel bookkeeping (the current visit's children)
    children_done: int = 0
    children_failed: int = 0
    parent_visit: int = 0  # for a child: the visit of its parallel node it belongs to
    # sagas (nodes with ``compensate``): the run's rev when its latest visit completed (the
    # compensations run newest first), and the attempts of its compensation so far
    done_rev: int = 0
    comp_tries: int = 0
    # a node timer (retry, delay, wait_timeout) that fell due while the run was paused
    held_timer: str | None = None
    map: MapState | None = None  # a map node's current visit
    child: str | None = None  # a subgraph node's child run (of its current attempt)
    base_visits: int = 0  # visits before the run was last re-run from here (max_visits)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_NODE

    def dump(self) -> bytes:
        return self.model_dump_json(exclude_defaults=True).encode()


class RunRecord(BaseModel):
    """The state of one run, stored as JSON in field ``run`` of the run's meta hash with
    every field present. Outside services read it raw: docs/protocol.md lists every field,
    and tests/docs checks that list against this one."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    graph_id: str
    graph_version: int
    status: RunStatus = RunStatus.RUNNING
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    idempotency_key: str | None = None
    steps: int = 0  # node activations so far (checked against graph.max_steps)
    tokens: int = 0  # live activations plus branch signals parked at joins
    waiting: int = 0  # nodes currently waiting for an approval
    live: int = 0  # live activations (tokens minus the signals parked at joins)
    last_dead_end: str | None = None  # last node whose routing matched no edge
    rev: int = 0  # bumped by every applied transition (optimistic concurrency)
    trace: RunTrace | None = None  # the run's span (tracing = "otel"), for its jobs' spans
    parent: ParentRef | None = None  # a child run's parent (a subgraph node, a map item)
    pins: dict[str, int] = Field(default_factory=dict)  # subgraph graph id -> its version
    priority: int = 0  # its jobs' priority in their queues (0-100, higher first)
    deadline: float | None = None  # the graph's timeout_s from the (re)start; None: none
    restarts: int = 0  # retries and reruns so far: its run_timeout timer's ``attempt``

    def dump(self) -> bytes:
        # Every field, defaults included: services in other languages read this record.
        return self.model_dump_json().encode()


class LoopRecord(BaseModel):
    """Bookkeeping of one loop (cyclic component) in one run."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = 0
    touched: bool = False
    exits_taken: list[int] = Field(default_factory=list)


class StateView(Protocol):
    """What the transition function may read. Implementations may load lazily; the function
    reads only the event's neighbourhood. Every call returns records of its own (fresh
    objects): the transition changes the records it reads."""

    def run(self) -> RunRecord | None: ...

    def node(self, node_id: str) -> NodeRecord | None: ...

    def output(self, node_id: str, visit: int) -> Any:
        """The stored output of (node, visit), or ``MISSING``."""
        ...

    def arrivals(self, node_id: str, edge_index: int) -> str: ...

    def loop(self, loop_id: int) -> LoopRecord | None: ...

    def active_nodes(self) -> dict[str, int]:
        """The run's live frontier: node id -> visit. Read only to finish or cancel a run."""
        ...

    def item_input(self, node_id: str, visit: int, item: int) -> Any:
        """One item of a map visit's list (``MISSING`` if none)."""
        ...

    def item_results(self, node_id: str, visit: int, total: int) -> list[Any]:
        """A map visit's item results in item order (``MISSING`` where none), read once
        when the map completes."""
        ...


@dataclass
class Transition:
    """The result of one event: state changes, actions and history, or why it was ignored."""

    run: RunRecord | None = None
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    outputs: dict[tuple[str, int], Any] = field(default_factory=dict)
    # map items: (node, visit) -> the item list (one field per item), (node, visit, item) ->
    # an item's result, and the map visits whose item fields are deleted (it completed)
    item_inputs: dict[tuple[str, int], list[Any]] = field(default_factory=dict)
    item_outputs: dict[tuple[str, int, int], Any] = field(default_factory=dict)
    items_dropped: dict[tuple[str, int], int] = field(default_factory=dict)
    joins: dict[tuple[str, int], str] = field(default_factory=dict)
    loops: dict[int, LoopRecord] = field(default_factory=dict)
    active_add: dict[str, int] = field(default_factory=dict)
    active_remove: set[str] = field(default_factory=set)
    actions: list[Action] = field(default_factory=list)
    history: list[HistoryEvent] = field(default_factory=list)
    ignored: str | None = None  # set when the event changed nothing, saying why
