"""Branch signals, joins and loops: dead-path elimination with per-loop deferral."""

from __future__ import annotations

from graph_core.events import (
    ErrorInfo,
)
from graph_core.machine import MachineBase
from graph_core.routing import join_need

__all__ = ["Joins"]


class Joins(MachineBase):
    def _settle(self) -> None:
        while not self.finished:
            while self.signals and not self.finished:
                index, taken = self.signals.popleft()
                self._deliver(index, taken)
            if self.finished or not self._idle_loops():
                break
        run = self.tx.run
        if not self.finished and run.tokens <= 0:
            where = f"; the last branch stopped at {run.last_dead_end!r}, where no edge matched"
            self._fail(
                ErrorInfo(
                    type="NoEndReached",
                    code="no_end_reached",
                    node_id=run.last_dead_end,
                    message="the run went idle without reaching an end node"
                    + (where if run.last_dead_end else ""),
                )
            )

    def _idle_loops(self) -> bool:
        """Signal *dead* on the untaken exits of every loop that went idle. True if any."""
        queued = False
        for loop_id in self.tx.touched_loops():
            rec = self.tx.loop(loop_id)
            if rec.touched and rec.tokens <= 0:
                for index in self.topo.loop_exits.get(loop_id, []):
                    if index not in rec.exits_taken:
                        self.signals.append((index, False))
                        queued = True
                rec.touched = False
                rec.exits_taken = []
        return queued

    def _deliver(self, index: int, taken: bool) -> None:
        edge = self.g.edges[index]
        target = edge.target
        if index in self.topo.back_edges or len(self.topo.join_inputs[target]) <= 1:
            if taken:
                self._activate(target, trigger=edge.source)
            else:
                self._skip(target)
            return
        signals = self.tx.arrivals(target, index)
        rec = self.tx.node(target)
        if not signals:
            rec.edges_ready += 1
            rec.head_taken += 1 if taken else 0
        self.tx.set_arrivals(target, index, signals + ("t" if taken else "d"))
        if taken:
            self._tokens(target, +1)  # parked at the join until its generation completes
        self._try_fire(target, edge.source)

    def _try_fire(self, target: str, source: str) -> None:
        node = self.g.node(target)
        rec = self.tx.node(target)
        inputs = self.topo.join_inputs[target]
        need = join_need(node.join, len(inputs))
        while not self.finished:
            complete = rec.edges_ready == len(inputs)
            if not rec.fired and (rec.head_taken >= need or (complete and rec.head_taken > 0)):
                rec.fired = True
                self._activate(target, trigger=source)
            if not complete:
                return
            if not rec.fired:
                self._skip(target)
            self._next_generation(target, inputs)

    def _next_generation(self, target: str, inputs: list[int]) -> None:
        rec = self.tx.node(target)
        consumed = ready = head_taken = 0
        for index in inputs:
            signals = self.tx.arrivals(target, index)
            if signals[:1] == "t":
                consumed += 1
            signals = signals[1:]
            self.tx.set_arrivals(target, index, signals)
            if signals:
                ready += 1
                head_taken += 1 if signals[0] == "t" else 0
        rec.edges_ready, rec.head_taken, rec.fired = ready, head_taken, False
        self._tokens(target, -consumed)
