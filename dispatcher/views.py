"""Read models for clients: ``RunView`` (what ``relaygraph status --json`` prints) and
``RunSummary`` (one line of ``relaygraph runs``), built from the run store's records."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from dispatcher.queue import IN_PROGRESS_KEY_PREFIX
from dispatcher.store import GraphNotFound, RunStore, StoreError
from graph_core.events import ErrorInfo
from graph_core.state import NodeRecord, RunRecord
from graph_core.status import TERMINAL_RUN, NodeStatus, RunStatus

__all__ = [
    "NodeView",
    "RunSummary",
    "RunView",
    "WaitView",
    "dumps_view",
    "load_run_view",
    "load_summaries",
]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeView(_View):
    """One node of a run. ``output`` is the output of its latest completed visit."""

    status: NodeStatus
    visits: int
    attempts: int
    output: Any = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None


class WaitView(_View):
    """A node paused for an approval; ``token`` must accompany the approval. In a parent
    run's view, ``run_id`` names the child run (of a subgraph node, or a map item) where the
    node waits; None: the run itself."""

    node_id: str
    prompt: Any = None
    token: str
    since: float
    visit: int
    run_id: str | None = None


class RunView(_View):
    """A run as clients see it (the document ``relaygraph status --json`` prints)."""

    run_id: str
    graph_id: str
    graph_version: int
    status: RunStatus
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    nodes: dict[str, NodeView]
    waiting: list[WaitView]
    history_length: int

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_RUN

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RunSummary(_View):
    run_id: str
    graph_id: str
    graph_version: int
    status: RunStatus
    created_at: float
    finished_at: float | None = None
    error: ErrorInfo | None = None


async def load_run_view(store: RunStore, run_id: str) -> RunView | None:
    """Build the view of ``run_id`` in a few round trips (None: no such run).

    Nodes are listed in graph order, including those the run never reached (``pending``).
    """
    rk = store.keys.run(run_id)
    pipe = store.redis.pipeline(transaction=False)
    pipe.hget(rk.meta, "run")
    pipe.hgetall(rk.nodes)
    pipe.hgetall(rk.waits)
    pipe.xlen(rk.events)
    run_raw, nodes_raw, waits_raw, history_length = await pipe.execute()
    if run_raw is None:
        return None
    run = _parse_run(run_id, run_raw)
    records = {k.decode(): NodeRecord.model_validate_json(v) for k, v in nodes_raw.items()}
    tokens = {k.decode(): v.decode() for k, v in waits_raw.items()}
    outputs = await store.outputs_of(
        run_id, {nid: rec.last_ok_visit for nid, rec in records.items() if rec.last_ok_visit > 0}
    )
    await _mark_running(store, run_id, records)
    order = await _node_order(store, run, records)
    nodes = {nid: _node_view(records.get(nid), outputs.get(nid)) for nid in order}
    waiting = _waits(records, tokens) + await _child_waits(store, _children(records))
    waiting.sort(key=lambda w: w.since)
    return RunView(
        run_id=run.run_id,
        graph_id=run.graph_id,
        graph_version=run.graph_version,
        status=run.status,
        input=run.input,
        output=run.output,
        error=run.error,
        created_at=run.created_at,
        updated_at=run.updated_at,
        finished_at=run.finished_at,
        nodes=nodes,
        waiting=waiting,
        history_length=int(history_length),
    )


MAX_CHILD_RUNS_READ = 1000  # a view reads at most this many child runs' waits


def child_waits_for(view: RunView, node_id: str, token: str | None = None) -> list[WaitView]:
    """The child runs' waits that a decision on ``node_id`` made through ``view``'s run may
    go to (with ``token``: the one it names). None without a token when the run has a
    node of that id itself: a late or duplicate decision for it must not reach a child's
    node of the same name."""
    if token is None and node_id in view.nodes:
        return []
    return [
        w
        for w in view.waiting
        if w.run_id is not None and w.node_id == node_id and token in (None, w.token)
    ]


def _waits(
    records: dict[str, NodeRecord], tokens: dict[str, str], run_id: str | None = None
) -> list[WaitView]:
    """The waits of a run's records (``run_id``: a child run's, named in its parent's view)."""
    return [
        WaitView(
            node_id=nid,
            prompt=rec.wait.prompt,
            token=tokens.get(nid, rec.wait.token),
            since=rec.wait.since,
            visit=rec.wait.visit,
            run_id=run_id,
        )
        for nid, rec in records.items()
        if rec.status == NodeStatus.WAITING and rec.wait is not None
    ]


def _children(records: dict[str, NodeRecord]) -> list[str]:
    """The child runs live under these nodes: subgraph nodes' and maps' over a graph."""
    found: list[str] = []
    for rec in records.values():
        if rec.status != NodeStatus.RUNNING:
            continue
        if rec.child is not None:
            found.append(rec.child)
        if rec.map is not None:
            found.extend(rec.map.children[i] for i in sorted(rec.map.children))
    return found


async def _child_waits(store: RunStore, child_ids: list[str]) -> list[WaitView]:
    """The waits of these child runs and of their own children, level by level (at most
    ``MAX_CHILD_RUNS_READ`` runs read), each naming its run."""
    waits: list[WaitView] = []
    read = 0
    level = child_ids
    while level and read < MAX_CHILD_RUNS_READ:
        level = level[: MAX_CHILD_RUNS_READ - read]
        read += len(level)
        pipe = store.redis.pipeline(transaction=False)
        for child in level:
            rk = store.keys.run(child)
            pipe.hgetall(rk.nodes)
            pipe.hgetall(rk.waits)
        replies = await pipe.execute()
        below: list[str] = []
        for i, child in enumerate(level):
            nodes_raw, waits_raw = replies[2 * i], replies[2 * i + 1]
            records = {k.decode(): NodeRecord.model_validate_json(v) for k, v in nodes_raw.items()}
            tokens = {k.decode(): v.decode() for k, v in waits_raw.items()}
            waits += _waits(records, tokens, child)
            below += _children(records)
        level = below
    return waits


async def _mark_running(store: RunStore, run_id: str, records: dict[str, NodeRecord]) -> None:
    """Show a queued node whose job a worker has started as ``running``: the engine keeps it
    ``queued`` (starting a job sends the dispatcher nothing), but arq's in-progress key of
    the attempt's job tells; and one a fleet-wide limit holds back as ``throttled``."""
    queued = [(nid, rec) for nid, rec in records.items() if rec.status == NodeStatus.QUEUED]
    if not queued:
        return
    pipe = store.redis.pipeline(transaction=False)
    for nid, rec in queued:
        jid = store.keys.job_id(run_id, nid, rec.visits, rec.attempt)
        pipe.exists(IN_PROGRESS_KEY_PREFIX + jid)
        pipe.hexists(store.keys.limits_throttled, jid)
    replies = await pipe.execute()
    for i, (_nid, rec) in enumerate(queued):
        if replies[2 * i]:
            rec.status = NodeStatus.RUNNING
        elif replies[2 * i + 1]:
            rec.status = NodeStatus.THROTTLED


async def load_summaries(store: RunStore, run_ids: list[str]) -> list[RunSummary]:
    """Summaries of ``run_ids`` in one round trip; runs that expired meanwhile are left out."""
    if not run_ids:
        return []
    pipe = store.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(store.keys.run(run_id).meta, "run")
    summaries = []
    for run_id, raw in zip(run_ids, await pipe.execute(), strict=True):
        if raw is None:
            continue
        run = _parse_run(run_id, raw)
        summaries.append(
            RunSummary(
                run_id=run.run_id,
                graph_id=run.graph_id,
                graph_version=run.graph_version,
                status=run.status,
                created_at=run.created_at,
                finished_at=run.finished_at,
                error=run.error,
            )
        )
    return summaries


def _parse_run(run_id: str, raw: bytes) -> RunRecord:
    try:
        return RunRecord.model_validate_json(raw)
    except ValueError as e:
        raise StoreError(f"run {run_id!r} has a corrupt record: {e}") from e


async def _node_order(store: RunStore, run: RunRecord, records: dict[str, NodeRecord]) -> list[str]:
    try:
        graph = await store.graph(run.graph_id, run.graph_version)
    except GraphNotFound:
        return sorted(records)
    return [n.id for n in graph.nodes]


def _node_view(rec: NodeRecord | None, output: Any) -> NodeView:
    if rec is None:
        return NodeView(status=NodeStatus.PENDING, visits=0, attempts=0)
    return NodeView(
        status=rec.status,
        visits=rec.visits,
        attempts=rec.attempt,
        output=output,
        error=rec.error,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
    )


def dumps_view(view: RunView) -> bytes:
    """The view as indented JSON (what ``status --json`` prints)."""
    return orjson.dumps(view.to_json_dict(), option=orjson.OPT_INDENT_2)
