"""``subgraph`` nodes: a node that runs another registered graph as a child run.

``config: {graph: ID, version?: N, input?: {...templates...}, output?: {...templates...}}``.
Starting the node submits a child run (its own run id, ``parent`` in its record) through the
inbox, in the same atomic write as the parent's transition; the node shows ``running`` with
the child's id in its record. The child's end comes back as a ``child`` message, written
with the child's last transition: the node completes with the child's output (mapped by
``output``, whose templates read it as ``child.output``), or fails with an error naming the
child run, its status and its error (then the node's retry policy starts a new child).

* The child's graph version is the node's ``version``, else the one fixed when the parent
  run started (``pins``: the latest of every graph named statically, resolved at submit),
  else the latest when the child is submitted (a graph id given by a template).
* Stopping the node (the parent is cancelled, fails, or ends) cancels the child, which
  cancels its own children: cancellation propagates down the tree.
* Children nest at most ``MAX_DEPTH`` deep: a deeper one fails its node (graphs that include
  each other through templates end there; static cycles are refused when a graph is
  registered).

The same machinery runs a ``map`` node over a graph: one child run per item
(graph_core.maps).
"""

from __future__ import annotations

from typing import Any, Final

from graph_core.events import (
    CancelChild,
    ChildFinished,
    ErrorInfo,
    ParentRef,
    StartChild,
)
from graph_core.machine import MachineBase
from graph_core.model import Node
from graph_core.paths import MISSING
from graph_core.status import NodeStatus

__all__ = ["MAX_DEPTH", "SUBGRAPH_KEYS", "Subgraphs"]

MAX_DEPTH: Final = 10
SUBGRAPH_KEYS: Final = frozenset({"graph", "version", "input", "output"})
_RUN_ID_KEEP: Final = 64  # of the parent's run id, in a child's: ids stay under 128


class _ChildSource:
    """Templates of a subgraph's ``output``: ``child.output`` is the child run's output;
    everything else reads the parent run as usual."""

    def __init__(self, base: Any, output: Any) -> None:
        self._base = base
        self._output = output

    def run_input(self) -> Any:
        return self._base.run_input()

    def latest_output(self, node_id: str) -> Any:
        return self._output if node_id == "child" else self._base.latest_output(node_id)

    def output_at(self, node_id: str, visit: int) -> Any:
        if node_id == "child":
            return self._output if visit == 1 else MISSING
        return self._base.output_at(node_id, visit)

    def visit_count(self, node_id: str) -> int:
        return 1 if node_id == "child" else int(self._base.visit_count(node_id))


class Subgraphs(MachineBase):
    def _start_child(self, node: Node, item: int | None = None, value: Any = None) -> None:
        """Submit the child run of the node's current attempt (of map item ``item``, whose
        input is ``value``)."""
        rec = self.tx.node(node.id)
        run = self.tx.run
        config = node.config
        graph_id = self._render(node, config.get("graph"))
        if self.finished:
            return
        if not isinstance(graph_id, str) or not graph_id:
            self._fail(
                ErrorInfo(
                    type="SubgraphError",
                    code="bad_subgraph",
                    node_id=node.id,
                    message=f"graph {config.get('graph')!r} renders to {graph_id!r}, "
                    "not a graph id",
                )
            )
            return
        depth = run.parent.depth + 1 if run.parent is not None else 1
        if depth > MAX_DEPTH:
            self._fail(
                ErrorInfo(
                    type="SubgraphError",
                    code="subgraph_depth",
                    node_id=node.id,
                    retryable=False,
                    message=f"child runs nest at most {MAX_DEPTH} deep: graph {graph_id!r} "
                    f"would start one at depth {depth} (graphs that include each other?)",
                )
            )
            return
        if item is None:
            child_input = (
                self._render(node, config["input"])
                if "input" in config
                else self._passed_on(rec.trigger)
            )
            if self.finished:
                return
        else:
            child_input = value
        version = config.get("version")
        if not isinstance(version, int):
            version = run.pins.get(graph_id)
        attempt = rec.attempt if item is None else (rec.map.running[item] if rec.map else 1)
        child_id = f"{run.run_id[:_RUN_ID_KEEP]}-{self.tx.env.new_token()[:20]}"
        parent = ParentRef(
            run_id=run.run_id,
            node_id=node.id,
            visit=rec.visits,
            attempt=attempt,
            item=item,
            depth=depth,
        )
        self.tx.actions.append(
            StartChild(
                run_id=child_id,
                graph_id=graph_id,
                graph_version=version,
                input=child_input,
                parent=parent,
            )
        )
        if item is None:
            rec.status = NodeStatus.RUNNING
            rec.child = child_id
        elif rec.map is not None:
            rec.map.children[item] = child_id
        self.tx.emit(
            "subgraph.started",
            node.id,
            visit=rec.visits,
            attempt=attempt,
            child_run_id=child_id,
            graph_id=graph_id,
            graph_version=version,
            **({"item": item} if item is not None else {}),
        )

    def _child_finished(self, ev: ChildFinished) -> str | None:
        if not self.g.has_node(ev.node_id):
            return f"child run of unknown node {ev.node_id!r}"
        if ev.item is not None:
            return self._map_child_finished(ev)
        rec = self.tx.peek(ev.node_id)
        if (
            rec.status != NodeStatus.RUNNING
            or rec.child != ev.child_run_id
            or (rec.visits, rec.attempt) != (ev.visit, ev.attempt)
        ):
            return f"stale end of child run {ev.child_run_id!r} of {ev.node_id!r}"
        node = self.g.node(ev.node_id)
        self.tx.emit(
            "subgraph.finished",
            node.id,
            visit=ev.visit,
            attempt=ev.attempt,
            child_run_id=ev.child_run_id,
            status=ev.status,
        )
        if ev.status == "completed":
            output = ev.output
            if "output" in node.config:
                source = _ChildSource(self.tx, ev.output)
                output = self._render(node, node.config["output"], source)
                if self.finished:  # the template failed the run
                    return None
            self.tx.node(node.id).child = None
            self._complete(node.id, ev.visit, output)
            return None
        self.tx.node(node.id).child = None
        self._failed(node.id, self._child_error(ev))
        return None

    def _child_error(self, ev: ChildFinished) -> ErrorInfo:
        cause = ev.error
        where = f" at node {cause.node_id!r}" if cause is not None and cause.node_id else ""
        said = f": {cause.type}: {cause.message}" if cause is not None else ""
        return ErrorInfo(
            type="ChildRunFailed",
            code="child_failed",
            node_id=ev.node_id,
            retryable=cause.retryable if cause is not None else True,
            message=f"child run {ev.child_run_id!r} {ev.status}{where}{said}",
        )

    def _stop_child(self, child_id: str, node_id: str) -> None:
        self.tx.actions.append(
            CancelChild(
                run_id=child_id,
                reason=f"its parent run {self.tx.run.run_id!r} stopped node {node_id!r}",
            )
        )
