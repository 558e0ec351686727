"""What the API and the console both do on a caller's behalf, with the same checks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from dispatcher.views import RunView, WaitView, child_waits_for
from graph_core.errors import PathError
from graph_core.model import Graph
from graph_core.paths import MISSING, resolve
from graph_core.status import TERMINAL_RUN, RunStatus
from relaygraph.api.auth import Principal, Role
from relaygraph.api.deps import ApiContext, run_id_param
from relaygraph.api.models import Accepted
from relaygraph.api.problems import Problem

__all__ = [
    "MAX_INBOX",
    "OPERATIONS",
    "Decision",
    "Operation",
    "approvers_of",
    "decide",
    "decisions_of",
    "may_decide",
    "operate",
    "waiting_decisions",
]

MAX_INBOX = 500  # waiting runs looked at for an approvals inbox


def approvers_of(graph: Graph, node_id: str) -> list[str] | None:
    """A node's ``config.approvers`` (key names and role names); None: any approver."""
    listed = graph.node(node_id).config.get("approvers") if graph.has_node(node_id) else None
    if isinstance(listed, str):
        return [listed]
    if isinstance(listed, list):
        return [str(x) for x in listed]
    return None


def may_decide(who: Principal, approvers: list[str] | None) -> bool:
    """Whether ``who`` may approve or reject a node with these ``approvers``."""
    return who.may(Role.APPROVER) and (approvers is None or who.matches(approvers))


@dataclass(frozen=True)
class Decision:
    """A node waiting for a decision, as the API's inbox and the console show it."""

    run: RunView
    wait: WaitView
    approvers: list[str] | None
    may: bool  # the signed-in key may approve or reject it
    shown: list[tuple[str, Any]]  # the node's config.show paths and their values


def _decision(who: Principal, view: RunView, graph: Graph, wait: WaitView) -> Decision:
    listed = approvers_of(graph, wait.node_id)
    return Decision(
        run=view,
        wait=wait,
        approvers=listed,
        may=may_decide(who, listed),
        shown=_shown(view, graph.node(wait.node_id).config.get("show")),
    )


class _ViewSource:
    """Path resolution over a run's view (latest outputs only)."""

    def __init__(self, view: RunView) -> None:
        self.view = view

    def run_input(self) -> Any:
        return self.view.input

    def latest_output(self, node_id: str) -> Any:
        node = self.view.nodes.get(node_id)
        return node.output if node is not None and node.visits else MISSING

    def output_at(self, node_id: str, visit: int) -> Any:
        node = self.view.nodes.get(node_id)
        return self.latest_output(node_id) if node is not None and node.visits == visit else MISSING

    def visit_count(self, node_id: str) -> int:
        node = self.view.nodes.get(node_id)
        return node.visits if node is not None else 0


def _shown(view: RunView, paths: Any) -> list[tuple[str, Any]]:
    """The values of a human node's ``config.show`` paths (``input.x``, ``node.output.y``),
    for the approver to decide with (``None`` where a path leads nowhere)."""
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list):
        return []
    source = _ViewSource(view)
    shown = []
    for path in paths[:20]:
        if not isinstance(path, str):
            continue
        try:
            value = resolve(path, source)
        except PathError:
            value = MISSING
        shown.append((path, None if value is MISSING else value))
    return shown


def decisions_of(who: Principal, view: RunView, graph: Graph) -> list[Decision]:
    """The run's own waiting nodes, for ``who`` (a child run's waits are decided on its own
    page and in the inbox, with its graph's approvers)."""
    return [
        _decision(who, view, graph, w)
        for w in view.waiting
        if w.run_id is None and graph.has_node(w.node_id)
    ]


async def waiting_decisions(ctx: ApiContext, who: Principal) -> list[Decision]:
    """An approver's inbox: the nodes waiting for a decision in the ``MAX_INBOX`` runs that
    have waited longest, oldest first."""
    ids = await ctx.client.store.oldest_in_status(RunStatus.WAITING.value, MAX_INBOX)
    items: list[Decision] = []
    for view in await asyncio.gather(*(ctx.client.get_run(r) for r in ids)):
        if view is None or view.status in TERMINAL_RUN:
            continue
        graph = await ctx.client.get_graph(view.graph_id, view.graph_version)
        items.extend(decisions_of(who, view, graph))
    items.sort(key=lambda d: d.wait.since)
    return items


Operation = Literal["pause", "resume", "retry", "cancel"]
OPERATIONS: frozenset[str] = frozenset({"pause", "resume", "retry", "cancel"})


async def operate(
    ctx: ApiContext, who: Principal, run_id: str, operation: Operation
) -> RunView | None:
    """Pause, resume, retry or cancel a run as ``who`` (the actor). 404 for an unknown run;
    409 when its status does not allow it (``RunStateError``; a finished run's cancel).
    Returns the view a cancel checked (None for the others)."""
    rid, client = run_id_param(run_id), ctx.client
    if operation == "pause":
        await client.pause(rid, f"paused by {who.name}", actor=who.name)
    elif operation == "resume":
        await client.resume(rid, actor=who.name)
    elif operation == "retry":
        await client.retry(rid, actor=who.name)
    else:
        view = await client.get_run(rid)
        if view is None:
            raise Problem(
                404, "run-not-found", f"run {run_id!r} not found (never submitted, or expired)"
            )
        if view.terminal:
            raise Problem(409, "run-finished", f"run {run_id!r} is already {view.status.value}")
        await client.cancel(rid, f"cancelled by {who.name}", actor=who.name)
        return view
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
    wait = next((w for w in view.waiting if w.node_id == node_id and w.run_id is None), None)
    where = run_id
    waits = child_waits_for(view, node_id) if wait is None else []
    if waits:  # it waits in a child run: decided there, by the child graph's approvers
        if len(waits) > 1:
            runs = ", ".join(str(w.run_id) for w in waits[:5])
            raise Problem(
                409,
                "node-not-waiting",
                f"node {node_id!r} waits in {len(waits)} child runs of run {run_id!r} "
                f"({runs}{', ...' if len(waits) > 5 else ''}): decide through the child run's id",
            )
        wait = waits[0]
        where = wait.run_id or run_id
        child = await ctx.client.store.get_run(where)  # its record: which graph it runs
        if child is not None:
            graph = await ctx.client.get_graph(child.graph_id, child.graph_version)
    if wait is None and not graph.has_node(node_id):
        raise Problem(
            404,
            "node-not-found",
            f"graph {view.graph_id!r} v{view.graph_version} has no node {node_id!r}",
        )
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
        where, node_id, decision, data, actor=who.name, token=wait.token, comment=comment
    )
    ctx.metrics.decisions.labels(decision).inc()
    return Accepted(
        run_id=where, node_id=node_id, visit=wait.visit, decision=decision, actor=who.name
    )
