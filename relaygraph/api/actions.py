"""What the API and the console both do on a caller's behalf, with the same checks."""

from __future__ import annotations

from typing import Any, Literal

from graph_core.model import Graph
from relaygraph.api.auth import Principal
from relaygraph.api.deps import ApiContext, run_id_param
from relaygraph.api.models import Accepted
from relaygraph.api.problems import Problem

__all__ = ["approvers_of", "decide"]


def approvers_of(graph: Graph, node_id: str) -> list[str] | None:
    """A node's ``config.approvers`` (key names and role names); None: any approver."""
    listed = graph.node(node_id).config.get("approvers") if graph.has_node(node_id) else None
    if isinstance(listed, str):
        return [listed]
    if isinstance(listed, list):
        return [str(x) for x in listed]
    return None


async def decide(
    ctx: ApiContext,
    who: Principal,
    run_id: str,
    node_id: str,
    decision: Literal["approve", "reject"],
    data: dict[str, Any] | None,
    comment: str | None,
) -> Accepted:
    """Send ``who``'s decision on a waiting node, with the wait token the API keeps.

    404 for an unknown run or node, 409 for a finished run or a node that is not waiting,
    403 when the node's approvers do not admit ``who`` (and then nothing is sent).
    """
    view = await ctx.client.get_run(run_id_param(run_id))
    if view is None:
        raise Problem(
            404, "run-not-found", f"run {run_id!r} not found (never submitted, or expired)"
        )
    if view.terminal:
        raise Problem(409, "run-finished", f"run {run_id!r} is already {view.status.value}")
    graph = await ctx.client.get_graph(view.graph_id, view.graph_version)
    if not graph.has_node(node_id):
        raise Problem(
            404,
            "node-not-found",
            f"graph {view.graph_id!r} v{view.graph_version} has no node {node_id!r}",
        )
    wait = next((w for w in view.waiting if w.node_id == node_id), None)
    if wait is None:
        status = view.nodes[node_id].status.value if node_id in view.nodes else "unknown"
        raise Problem(
            409,
            "node-not-waiting",
            f"node {node_id!r} of run {run_id!r} is not waiting for a decision (it is {status})",
        )
    approvers = approvers_of(graph, node_id)
    if approvers is not None and not who.matches(approvers):
        raise Problem(
            403,
            "not-an-approver",
            f"key {who.name!r} is not among node {node_id!r}'s approvers "
            f"({', '.join(approvers) or 'none'})",
        )
    await ctx.client.decide(
        run_id, node_id, decision, data, actor=who.name, token=wait.token, comment=comment
    )
    ctx.metrics.decisions.labels(decision).inc()
    return Accepted(
        run_id=run_id, node_id=node_id, visit=wait.visit, decision=decision, actor=who.name
    )
