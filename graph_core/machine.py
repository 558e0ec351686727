"""The state shared by the parts of the transition function, and the calls between them.

The machine is split by concern (``flow``, ``joins``, ``parallel``, ``waits``); each part is a
mixin over this base, which declares what the parts call on each other.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from graph_core.events import ChildFinished, ErrorInfo, LeaseExpired, NodeReported, TimerFired
from graph_core.model import Graph, Node
from graph_core.status import RunStatus
from graph_core.topology import Topology
from graph_core.tx import Tx

__all__ = ["MachineBase"]


class MachineBase:
    tx: Tx
    g: Graph
    topo: Topology
    signals: deque[tuple[int, bool]]
    finished: bool

    # flow
    def _tokens(self, node_id: str, delta: int, parked: bool = False) -> None:
        raise NotImplementedError

    def _activate(self, node_id: str, trigger: str | None) -> None:
        raise NotImplementedError

    def _take_step(self, node_id: str) -> bool:
        raise NotImplementedError

    def _enqueue(self, node: Node) -> None:
        raise NotImplementedError

    def _render(self, node: Node, value: Any, source: Any = None) -> Any:
        raise NotImplementedError

    def _complete(
        self, node_id: str, visit: int, output: Any, chosen: set[int] | None = None
    ) -> None:
        raise NotImplementedError

    def _route(self, node_id: str, chosen: set[int]) -> None:
        raise NotImplementedError

    def _skip(self, node_id: str) -> None:
        raise NotImplementedError

    def _fail(self, error: ErrorInfo) -> None:
        raise NotImplementedError

    def _finish(
        self,
        status: RunStatus,
        output: Any = None,
        error: ErrorInfo | None = None,
        actor: str | None = None,
    ) -> None:
        raise NotImplementedError

    def _stop_node(self, node_id: str) -> None:
        raise NotImplementedError

    def _passed_on(self, trigger: str | None) -> Any:
        raise NotImplementedError

    def _timer(self, ev: TimerFired) -> str | None:
        raise NotImplementedError

    # pauses
    @property
    def _paused(self) -> bool:
        raise NotImplementedError

    def _hold(self, node_id: str) -> None:
        raise NotImplementedError

    def _hold_timer(self, ev: TimerFired) -> str | None:
        raise NotImplementedError

    # sagas
    def _saga_applies(self, cancelled: bool) -> bool:
        raise NotImplementedError

    def _start_saga(self, error: ErrorInfo, cause: str) -> None:
        raise NotImplementedError

    def _end_saga(self, status: RunStatus, error: ErrorInfo | None) -> None:
        raise NotImplementedError

    def _mark_done(self, node_id: str) -> None:
        raise NotImplementedError

    def _compensation_reported(self, ev: NodeReported) -> str | None:
        raise NotImplementedError

    def _compensation_timer(self, ev: TimerFired) -> str | None:
        raise NotImplementedError

    def _compensation_lost(self, node_id: str) -> None:
        raise NotImplementedError

    # joins
    def _settle(self) -> None:
        raise NotImplementedError

    # parallel
    def _start_children(self, parent_id: str) -> None:
        raise NotImplementedError

    def _child_completed(self, child: Node) -> None:
        raise NotImplementedError

    def _child_failed(self, child: Node, error: ErrorInfo) -> None:
        raise NotImplementedError

    # waits
    def _wait(self, node_id: str, prompt: Any) -> None:
        raise NotImplementedError

    def _give_up(self, node_id: str, error: ErrorInfo) -> None:
        raise NotImplementedError

    # maps
    def _start_map(self, node: Node) -> None:
        raise NotImplementedError

    def _map_stop(self, node_id: str) -> None:
        raise NotImplementedError

    def _map_resume(self, node_id: str) -> None:
        raise NotImplementedError

    def _map_reported(self, ev: NodeReported) -> str | None:
        raise NotImplementedError

    def _map_lease_expired(self, ev: LeaseExpired) -> str | None:
        raise NotImplementedError

    def _map_timer(self, ev: TimerFired) -> str | None:
        raise NotImplementedError

    def _map_child_finished(self, ev: ChildFinished) -> str | None:
        raise NotImplementedError

    # subgraphs
    def _start_child(self, node: Node, item: int | None = None, value: Any = None) -> None:
        raise NotImplementedError

    def _child_error(self, ev: ChildFinished) -> ErrorInfo:
        raise NotImplementedError

    def _stop_child(self, child_id: str, node_id: str) -> None:
        raise NotImplementedError

    def _failed(self, node_id: str, error: ErrorInfo) -> None:
        raise NotImplementedError
