"""Branch signals, joins and loops: dead-path elimination with per-loop deferral."""

from __future__ import annotations

from graph_core.events import ErrorInfo
from graph_core.machine import MachineBase
from graph_core.routing import join_need
from graph_core.state import JoinState
from graph_core.status import RunStatus

__all__ = ["Joins"]


class Joins(MachineBase):
    def _settle(self) -> None:
        if self.tx.run.status == RunStatus.COMPENSATING:
            return  # the flow stopped; only compensations move the run now (graph_core.sagas)
        emitted: set[int] = set()
        while not self.finished:
            while self.signals and not self.finished:
                index, taken = self.signals.popleft()
                self._deliver(index, taken)
            if self.finished or not self._idle_loops(emitted):
                break
        for loop_id in emitted:
            # The dead signals a loop sent may flow back into it (an exit into a node that
            # re-enters the loop): that is the same idle episode, not a new one.
            rec = self.tx.loop(loop_id)
            if rec.tokens <= 0:
                rec.touched = False
                rec.exits_taken = []
        if not self.finished and self.tx.run.live <= 0:
            self._stalled()

    def _stalled(self) -> None:
        """Nothing is running, waiting or scheduled, and no end was reached: fail clearly
        instead of leaving the run 'running' forever."""
        run = self.tx.run
        if run.tokens > run.live:
            message = (
                "the run stalled: branches are parked at a join that can no longer fire "
                "(its other inputs will never signal)"
            )
        else:
            message = "the run went idle without reaching an end node"
        if run.last_dead_end:
            message += f"; the last branch stopped at {run.last_dead_end!r}, where no edge matched"
        self._fail(
            ErrorInfo(
                type="NoEndReached",
                code="no_end_reached",
                node_id=run.last_dead_end,
                message=message,
            )
        )

    def _idle_loops(self, emitted: set[int]) -> bool:
        """Signal *dead* on the untaken deferred exits of every loop that went idle (once per
        loop and transition). True if any signal was queued."""
        queued = False
        for loop_id in self.tx.touched_loops():
            rec = self.tx.loop(loop_id)
            if rec.touched and rec.tokens <= 0 and loop_id not in emitted:
                emitted.add(loop_id)
                for index in self.topo.deferred_exits.get(loop_id, []):
                    if index not in rec.exits_taken:
                        self.signals.append((index, False))
                        queued = True
                rec.touched = False
                rec.exits_taken = []
        return queued

    def _deliver(self, index: int, taken: bool) -> None:
        edge = self.g.edges[index]
        target = edge.target
        self._touch(target)
        if index in self.topo.back_edges:
            if taken:
                self._activate(target, trigger=edge.source)
            return
        group = self.topo.group_of[index]
        inputs = self.topo.join_groups[target][group]
        if len(inputs) <= 1:
            if taken:
                self._activate(target, trigger=edge.source)
            else:
                self._skip(target)
            return
        signals = self.tx.arrivals(target, index)
        state = self.tx.node(target).joins.setdefault(str(group), JoinState())
        if not signals:
            state.ready += 1
            state.taken += 1 if taken else 0
        self.tx.set_arrivals(target, index, signals + ("t" if taken else "d"))
        if taken:
            state.trigger = edge.source
            self._tokens(target, +1, parked=True)  # parked until its generation completes
        self._try_fire(target, group, inputs)

    def _touch(self, node_id: str) -> None:
        for loop in self.topo.loops_of.get(node_id, ()):
            self.tx.loop(loop).touched = True

    def _try_fire(self, target: str, group: int, inputs: list[int]) -> None:
        node = self.g.node(target)
        state = self.tx.node(target).joins[str(group)]
        need = join_need(node.join, len(inputs))
        while not self.finished:
            complete = state.ready == len(inputs)
            if not state.fired and (state.taken >= need or (complete and state.taken > 0)):
                state.fired = True
                self._activate(target, trigger=state.trigger)
            if not complete:
                return
            if not state.fired:
                self._skip(target)
            self._next_generation(target, state, inputs)

    def _next_generation(self, target: str, state: JoinState, inputs: list[int]) -> None:
        consumed = ready = taken = 0
        for index in inputs:
            signals = self.tx.arrivals(target, index)
            if signals[:1] == "t":
                consumed += 1
            signals = signals[1:]
            self.tx.set_arrivals(target, index, signals)
            if signals:
                ready += 1
                taken += 1 if signals[0] == "t" else 0
        state.ready, state.taken, state.fired = ready, taken, False
        self._tokens(target, -consumed, parked=True)
