"""Write run state straight into the store layout, so worker tests need no dispatcher.

``setup_run`` registers a graph, writes a ``RunRecord`` and ``NodeRecord``s and stored outputs
exactly where the dispatcher keeps them (see ``graph_core.keys``); ``inbox_reports`` reads back
what workers reported.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from graph_core.events import NodeReported
from graph_core.keys import Keys, RunKeys
from graph_core.messages import JobPayload, dumps, parse_inbox
from graph_core.model import Graph
from graph_core.state import NodeRecord, RunRecord
from graph_core.status import NodeStatus, RunStatus
from tests.support.waiting import wait_for

__all__ = [
    "completed",
    "inbox_reports",
    "job_for",
    "queued",
    "setup_run",
    "wait_for_reports",
]


def queued(visit: int = 1, attempt: int = 1, **extra: Any) -> NodeRecord:
    """A node whose job for (visit, attempt) is on a queue."""
    return NodeRecord(status=NodeStatus.QUEUED, visits=visit, attempt=attempt, **extra)


def completed(visits: int = 1, **extra: Any) -> NodeRecord:
    """A node whose latest visit completed (its output is ``outputs[(node, visits)]``)."""
    return NodeRecord(
        status=NodeStatus.COMPLETED, visits=visits, attempt=1, last_ok_visit=visits, **extra
    )


async def setup_run(
    redis: Any,
    keys: Keys,
    graph: Graph,
    *,
    run_id: str = "run1",
    input: Any = None,
    nodes: Mapping[str, NodeRecord] | None = None,
    outputs: Mapping[tuple[str, int], Any] | None = None,
    status: RunStatus = RunStatus.RUNNING,
    register_graph: bool = True,
) -> RunKeys:
    """Store ``graph`` and one run of it; return the run's keys."""
    rk = keys.run(run_id)
    now = time.time()
    run = RunRecord(
        run_id=run_id,
        graph_id=graph.id,
        graph_version=graph.version,
        status=status,
        input=input,
        created_at=now,
        updated_at=now,
    )
    # one server: one transaction; a cluster's pipeline has none (the keys' slots differ)
    pipe = redis.pipeline(transaction=not keys.sharded)
    if register_graph:
        pipe.hset(keys.graphs, keys.graph_field(graph.id, graph.version), graph.to_json())
    pipe.hset(rk.meta, mapping={"run": run.dump(), "rev": 1})
    if nodes:
        pipe.hset(rk.nodes, mapping={nid: rec.dump() for nid, rec in nodes.items()})
    if outputs:
        pipe.hset(
            rk.outputs,
            mapping={RunKeys.output_field(n, v): dumps(out) for (n, v), out in outputs.items()},
        )
    await pipe.execute()
    return rk


def job_for(
    graph: Graph,
    node_id: str,
    *,
    run_id: str = "run1",
    visit: int = 1,
    attempt: int = 1,
    timeout_s: float | None = None,
) -> JobPayload:
    """The payload the dispatcher would enqueue for this attempt."""
    node = graph.node(node_id)
    return JobPayload(
        run_id=run_id,
        graph_id=graph.id,
        graph_version=graph.version,
        node_id=node_id,
        visit=visit,
        attempt=attempt,
        timeout_s=timeout_s if timeout_s is not None else node.timeout_s,
        parent=node.parent,
    )


async def inbox_reports(redis: Any, keys: Keys) -> list[NodeReported]:
    """Every ``NodeReported`` on the inbox streams (sharded: shard by shard), oldest first
    in each."""
    entries = [
        entry
        for k in range(max(1, keys.shards))
        for entry in await redis.xrange(keys.shard(k).inbox)
    ]
    reports = []
    for _id, fields in entries:
        message = parse_inbox(fields[b"m"])
        if isinstance(message, NodeReported):
            reports.append(message)
    return reports


async def wait_for_reports(
    redis: Any, keys: Keys, count: int = 1, timeout: float = 10.0
) -> list[NodeReported]:
    """Wait (with a deadline) until the inbox holds ``count`` reports; return them."""
    seen: list[NodeReported] = []

    async def enough() -> list[NodeReported] | None:
        nonlocal seen
        seen = await inbox_reports(redis, keys)
        return seen if len(seen) >= count else None

    result = await wait_for(
        enough, timeout=timeout, message=lambda: f"{count} report(s) on the inbox, saw {seen}"
    )
    return result or []
