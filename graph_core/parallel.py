"""`parallel` nodes: children run as separate jobs and are aggregated by a join."""

from __future__ import annotations

from typing import Any

from graph_core.events import (
    ErrorInfo,
)
from graph_core.machine import MachineBase
from graph_core.model import Node
from graph_core.routing import join_need
from graph_core.status import NodeStatus

__all__ = ["Parallel"]


class Parallel(MachineBase):
    def _start_children(self, parent_id: str) -> None:
        prec = self.tx.node(parent_id)
        prec.children_done = prec.children_failed = 0
        for child_id in self.topo.children.get(parent_id, []):
            if not self._take_step(child_id):
                return
            child = self.g.node(child_id)
            rec = self.tx.node(child_id)
            rec.visits += 1
            rec.attempt = 1
            rec.lost = 0
            rec.status = NodeStatus.QUEUED
            rec.parent_visit = prec.visits
            rec.started_at, rec.finished_at, rec.error, rec.wait = self.tx.now, None, None, None
            rec.trigger = parent_id
            self._tokens(child_id, +1)
            self.tx.mark_active(child_id, rec.visits)
            if child.type == "human":
                self._wait(child_id, self._render(child, child.config.get("prompt")))
            else:
                self._enqueue(child)

    def _parallel_need(self, parent: Node) -> tuple[int, int]:
        children = self.topo.children.get(parent.id, [])
        # The children's join: config.join (roomkit-graph's field), else the node's join.
        spec = parent.config.get("join", parent.join)
        return join_need(spec if spec in ("all", "any") else int(spec), len(children)), len(
            children
        )

    def _child_completed(self, child: Node) -> None:
        parent = self.g.node(child.parent or "")
        prec = self.tx.node(parent.id)
        if not prec.is_active:
            return
        prec.children_done += 1
        need, _ = self._parallel_need(parent)
        if prec.children_done < need:
            return
        output: dict[str, Any] = {}
        for child_id in self.topo.children.get(parent.id, []):
            crec = self.tx.node(child_id)
            if crec.parent_visit != prec.visits:
                continue
            if crec.status == NodeStatus.COMPLETED:
                output[child_id] = self.tx.output_at(child_id, crec.visits)
            elif crec.is_active:
                self._stop_node(child_id)
        self._complete(parent.id, prec.visits, output)

    def _child_failed(self, child: Node, error: ErrorInfo) -> None:
        parent = self.g.node(child.parent or "")
        prec = self.tx.node(parent.id)
        if not prec.is_active:
            return
        prec.children_failed += 1
        need, total = self._parallel_need(parent)
        if total - prec.children_failed < need:
            self._fail(
                error.model_copy(
                    update={
                        "message": f"{error.message} (parallel "
                        f"{parent.id!r} cannot reach its join of {need})"
                    }
                )
            )
