"""A write overlay over a ``StateView`` for the duration of one transition.

Reads go to the overlay first, then to the view (each record read once); writes stay in the
overlay and become the ``Transition``. It is also the ``DataSource`` that conditions and
templates resolve paths against, so they see this transition's own writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graph_core.events import Action, HistoryEvent
from graph_core.model import Graph
from graph_core.paths import MISSING
from graph_core.state import LoopRecord, NodeRecord, RunRecord, StateView, Transition
from graph_core.topology import Topology, topology

__all__ = ["Env", "Tx"]


class Env:
    """Everything impure a transition needs, injected: the time and a token source."""

    def __init__(self, now: float, new_token: Callable[[], str]) -> None:
        self.now = now
        self.new_token = new_token


class Tx:
    def __init__(self, graph: Graph, view: StateView, env: Env) -> None:
        self.graph = graph
        self.topo: Topology = topology(graph)
        self.view = view
        self.env = env
        self.now = env.now
        self._run: RunRecord | None = None
        self._run_loaded = False
        self._nodes: dict[str, NodeRecord] = {}
        self._dirty_nodes: set[str] = set()
        self._outputs: dict[tuple[str, int], Any] = {}
        self._written: set[tuple[str, int]] = set()
        self._item_inputs: dict[tuple[str, int], list[Any]] = {}
        self._item_outputs: dict[tuple[str, int, int], Any] = {}
        self._items_dropped: dict[tuple[str, int], int] = {}
        self._joins: dict[tuple[str, int], str] = {}
        self._dirty_joins: set[tuple[str, int]] = set()
        self._loops: dict[int, LoopRecord] = {}
        self._dirty_loops: set[int] = set()
        self.active_add: dict[str, int] = {}
        self.active_remove: set[str] = set()
        self.actions: list[Action] = []
        self.history: list[HistoryEvent] = []

    # --- run ----------------------------------------------------------------------------

    @property
    def run(self) -> RunRecord:
        rec = self.maybe_run()
        if rec is None:
            raise LookupError("transition has no run record")
        return rec

    def maybe_run(self) -> RunRecord | None:
        if not self._run_loaded:
            loaded = self.view.run()
            self._run = loaded
            self._run_loaded = True
        return self._run

    def set_run(self, rec: RunRecord) -> None:
        self._run = rec
        self._run_loaded = True

    # --- nodes --------------------------------------------------------------------------

    def node(self, node_id: str) -> NodeRecord:
        """The node's record, for reading and writing (marked dirty)."""
        rec = self.peek(node_id)
        self._dirty_nodes.add(node_id)
        return rec

    def peek(self, node_id: str) -> NodeRecord:
        """The node's record, read-only use (not marked dirty)."""
        rec = self._nodes.get(node_id)
        if rec is None:
            loaded = self.view.node(node_id)
            rec = loaded if loaded is not None else NodeRecord()
            self._nodes[node_id] = rec
        return rec

    def reset_node(self, node_id: str) -> NodeRecord:
        """Replace the node's record with a fresh one (a rerun), as if never reached but
        for its visit count: new visits get new numbers (so a late report of an earlier
        visit stays stale, and its job id stays its own)."""
        visits = self.peek(node_id).visits
        rec = self._nodes[node_id] = NodeRecord(visits=visits, base_visits=visits)
        self._dirty_nodes.add(node_id)
        return rec

    # --- outputs ------------------------------------------------------------------------

    def set_output(self, node_id: str, visit: int, value: Any) -> None:
        self._outputs[(node_id, visit)] = value
        self._written.add((node_id, visit))

    def output_at(self, node_id: str, visit: int) -> Any:
        key = (node_id, visit)
        if key in self._outputs:
            return self._outputs[key]
        value = self.view.output(node_id, visit)
        self._outputs[key] = value  # cache; only real writes are reported (see result)
        return value

    # --- map items ----------------------------------------------------------------------

    def set_item_inputs(self, node_id: str, visit: int, items: list[Any]) -> None:
        self._item_inputs[(node_id, visit)] = items

    def item_input(self, node_id: str, visit: int, item: int) -> Any:
        """Item ``item`` of the visit's list (a map over a graph starts its child with it)."""
        mine = self._item_inputs.get((node_id, visit))
        if mine is not None:
            return mine[item]
        return self.view.item_input(node_id, visit, item)

    def set_item_output(self, node_id: str, visit: int, item: int, value: Any) -> None:
        self._item_outputs[(node_id, visit, item)] = value

    def item_results(self, node_id: str, visit: int, total: int) -> list[Any]:
        """The visit's item results in order, this transition's own writes included."""
        mine = {
            i: v for (n, vis, i), v in self._item_outputs.items() if (n, vis) == (node_id, visit)
        }
        if len(mine) == total:
            return [mine[i] for i in range(total)]
        stored = self.view.item_results(node_id, visit, total)
        return [mine.get(i, stored[i]) for i in range(total)]

    def drop_items(self, node_id: str, visit: int, total: int) -> None:
        """Delete the visit's item fields (inputs and results) with this transition."""
        self._items_dropped[(node_id, visit)] = total
        for key in [k for k in self._item_outputs if k[:2] == (node_id, visit)]:
            del self._item_outputs[key]

    # DataSource protocol ----------------------------------------------------------------

    def run_input(self) -> Any:
        return self.run.input

    def latest_output(self, node_id: str) -> Any:
        if not self.graph.has_node(node_id):
            return MISSING
        rec = self.peek(node_id)
        if rec.last_ok_visit < 1:
            return MISSING
        return self.output_at(node_id, rec.last_ok_visit)

    def visit_count(self, node_id: str) -> int:
        return self.peek(node_id).visits if self.graph.has_node(node_id) else 0

    # --- joins and loops ----------------------------------------------------------------

    def arrivals(self, node_id: str, edge_index: int) -> str:
        key = (node_id, edge_index)
        if key not in self._joins:
            self._joins[key] = self.view.arrivals(node_id, edge_index)
        return self._joins[key]

    def set_arrivals(self, node_id: str, edge_index: int, signals: str) -> None:
        self._joins[(node_id, edge_index)] = signals
        self._dirty_joins.add((node_id, edge_index))

    def loop(self, loop_id: int) -> LoopRecord:
        rec = self._loops.get(loop_id)
        if rec is None:
            loaded = self.view.loop(loop_id)
            rec = loaded if loaded is not None else LoopRecord()
            self._loops[loop_id] = rec
        self._dirty_loops.add(loop_id)
        return rec

    def reset_loop(self, loop_id: int) -> None:
        """Replace the loop's record with a fresh one (a rerun)."""
        self._loops[loop_id] = LoopRecord()
        self._dirty_loops.add(loop_id)

    def touched_loops(self) -> list[int]:
        return sorted(self._dirty_loops)

    # --- frontier -----------------------------------------------------------------------

    def mark_active(self, node_id: str, visit: int) -> None:
        self.active_remove.discard(node_id)
        self.active_add[node_id] = visit

    def mark_inactive(self, node_id: str) -> None:
        self.active_add.pop(node_id, None)
        self.active_remove.add(node_id)

    def active_nodes(self) -> dict[str, int]:
        nodes = dict(self.view.active_nodes())
        for nid in self.active_remove:
            nodes.pop(nid, None)
        nodes.update(self.active_add)
        return nodes

    # --- output -------------------------------------------------------------------------

    def emit(self, type_: str, node_id: str | None = None, **data: Any) -> None:
        visit = data.pop("visit", None)
        attempt = data.pop("attempt", None)
        self.history.append(
            HistoryEvent(
                type=type_, at=self.now, node_id=node_id, visit=visit, attempt=attempt, data=data
            )
        )

    def result(self) -> Transition:
        return Transition(
            run=self._run,
            nodes={nid: self._nodes[nid] for nid in sorted(self._dirty_nodes)},
            outputs={k: self._outputs[k] for k in sorted(self._written)},
            item_inputs=self._item_inputs,
            item_outputs=self._item_outputs,
            items_dropped=self._items_dropped,
            joins={k: self._joins[k] for k in self._dirty_joins},
            loops={k: self._loops[k] for k in self._dirty_loops},
            active_add=self.active_add,
            active_remove=self.active_remove,
            actions=self.actions,
            history=self.history,
        )
