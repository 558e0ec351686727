"""``map`` nodes: one job per item of a list, at most ``max_concurrency`` at a time.

``config: {items: "{{ path }}" | [...], node: {type, config}, max_concurrency: N,
tolerated_failures: N | "P%"}``. The map renders ``items`` when it starts; a value that is
not a list fails the node, naming the template and the type found. Each item runs the inner
node's handler as a job of its own (``ctx.item``, ``ctx.index``), on the map node's queue,
with the map node's ``timeout_s`` and retry policy per item. The map keeps at most
``max_concurrency`` items in flight (a retry waiting for its timer counts), so the limit holds
across dispatcher crashes: it is part of the node's record, written with every transition.

Items that fail for good count against ``tolerated_failures``: past it the map fails and its
items still in flight are cancelled. When every item ended, the map completes with the list
of results in item order (``null`` for an item that failed within the tolerance).

Cost: the map's record holds counters and the items in flight only, so an item's event reads
and writes O(max_concurrency), whatever the number of items; item inputs and results are one
field each of the run's outputs hash, written once and read once (all of them, when the map
completes, to build its output), then deleted.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from graph_core.events import (
    CancelNode,
    ChildFinished,
    DropTimer,
    EnqueueNode,
    ErrorInfo,
    LeaseExpired,
    NodeReported,
    ScheduleTimer,
    TimerFired,
)
from graph_core.machine import MachineBase
from graph_core.model import Node
from graph_core.paths import MISSING
from graph_core.routing import backoff_delay, is_retryable
from graph_core.state import MapState
from graph_core.status import NodeStatus
from graph_core.waits import MAX_LOST_ATTEMPTS

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "MAP_KEYS",
    "MAX_CONCURRENCY",
    "MAX_ITEMS",
    "Maps",
    "map_limit",
    "tolerance",
]

DEFAULT_MAX_CONCURRENCY: Final = 10
MAX_CONCURRENCY: Final = 1000  # the record holds the items in flight: keep it small
MAX_ITEMS: Final = 100_000
MAP_KEYS: Final = frozenset({"items", "node", "graph", "max_concurrency", "tolerated_failures"})
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def map_limit(value: Any) -> int:
    """``max_concurrency``: a whole number from 1 to ``MAX_CONCURRENCY``; ValueError else."""
    if value is None:
        return DEFAULT_MAX_CONCURRENCY
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(
            f"max_concurrency must be a whole number from 1 to {MAX_CONCURRENCY}, got {value!r}"
        )
    return value


def tolerance(value: Any, total: int) -> int:
    """How many failed items ``tolerated_failures`` allows out of ``total``: a whole number,
    or a percentage ``"P%"`` of the items (rounded down). ValueError for anything else."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"tolerated_failures must be >= 0, got {value}")
        return value
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if m is not None and float(m.group(1)) <= 100:
            return math.floor(total * float(m.group(1)) / 100 + 1e-9)
    raise ValueError(
        f'tolerated_failures must be a whole number or a percentage like "10%", got {value!r}'
    )


class Maps(MachineBase):
    # --- start --------------------------------------------------------------------------

    def _start_map(self, node: Node) -> None:
        rec = self.tx.node(node.id)
        items = self._render(node, node.config.get("items"))
        if self.finished:
            return
        where = node.config.get("items")
        if not isinstance(items, list):
            found = "nothing" if items is None or items is MISSING else type(items).__name__
            self._map_error(node.id, "bad_items", f"items {where!r} is {found}, not a list")
            return
        try:
            limit = map_limit(node.config.get("max_concurrency"))
            tolerated = tolerance(node.config.get("tolerated_failures"), len(items))
            if len(items) > MAX_ITEMS:
                raise ValueError(f"{len(items)} items is over the limit of {MAX_ITEMS}")
        except ValueError as e:
            self._map_error(node.id, "bad_map", str(e))
            return
        rec.status = NodeStatus.RUNNING
        rec.map = MapState(total=len(items), limit=limit, tolerated=tolerated)
        self.tx.emit(
            "map.started", node.id, visit=rec.visits, items=len(items), max_concurrency=limit
        )
        if not items:
            self._complete(node.id, rec.visits, [])
            return
        self.tx.set_item_inputs(node.id, rec.visits, items)
        self._map_fill(node)

    def _map_error(self, node_id: str, code: str, message: str) -> None:
        self._fail(ErrorInfo(type="MapError", code=code, node_id=node_id, message=message))

    def _map_fill(self, node: Node) -> None:
        """Start items while there is room under ``max_concurrency`` (not while paused)."""
        rec = self.tx.node(node.id)
        m = rec.map
        if m is None or self._paused:
            return
        while len(m.running) < m.limit and m.next < m.total:
            item = m.next
            m.next += 1
            m.running[item] = 1
            self._enqueue_item(node, rec.visits, item, 1)

    def _enqueue_item(self, node: Node, visit: int, item: int, attempt: int) -> None:
        if "graph" in node.config:  # a map over a graph: the item is a child run's input
            self.tx.emit("map.item_enqueued", node.id, visit=visit, attempt=attempt, item=item)
            self._start_child(node, item, self.tx.item_input(node.id, visit, item))
            return
        queue = node.queue or "default"
        self.tx.actions.append(
            EnqueueNode(
                node_id=node.id,
                visit=visit,
                attempt=attempt,
                queue=queue,
                timeout_s=node.timeout_s,
                item=item,
                type=node.job_type,
            )
        )
        self.tx.emit("map.item_enqueued", node.id, visit=visit, attempt=attempt, item=item)

    # --- events of items ----------------------------------------------------------------

    def _current_item(self, node_id: str, visit: int, item: int, attempt: int) -> str | None:
        """Why an item's event is stale, or None when it is the item's current attempt."""
        rec = self.tx.peek(node_id)
        m = rec.map
        if rec.visits != visit or m is None or rec.status != NodeStatus.RUNNING:
            return f"stale event for item {item} of map {node_id!r} visit {visit}"
        if m.running.get(item) != attempt or item in m.held:
            return (
                f"stale event for item {item} of map {node_id!r}: attempt {attempt} is not current"
            )
        return None

    def _map_reported(self, ev: NodeReported) -> str | None:
        item = ev.item if ev.item is not None else -1
        stale = self._current_item(ev.node_id, ev.visit, item, ev.attempt)
        if stale is not None:
            return stale
        if ev.status == "completed":
            self._item_completed(ev.node_id, item, ev.attempt, ev.output)
            return None
        if ev.status == "waiting":
            error = ErrorInfo(
                type="MapItemCannotWait",
                retryable=False,
                message="a map item's handler returned waiting: items of a node map cannot "
                "wait for an approval (map over a graph with a human node instead)",
            )
        else:
            error = ev.error or ErrorInfo(type="Error", message="the worker gave no error")
        self._item_failed(ev.node_id, item, error.model_copy(update={"node_id": ev.node_id}))
        return None

    def _map_child_finished(self, ev: ChildFinished) -> str | None:
        """The child run of a map item (a map over a graph) ended."""
        item = ev.item if ev.item is not None else -1
        stale = self._current_item(ev.node_id, ev.visit, item, ev.attempt)
        m = self.tx.peek(ev.node_id).map
        if stale is None and (m is None or m.children.get(item) != ev.child_run_id):
            stale = f"stale end of child run {ev.child_run_id!r} of map {ev.node_id!r}"
        if stale is not None:
            return stale
        mine = self.tx.node(ev.node_id).map
        if mine is not None:
            mine.children.pop(item, None)
        if ev.status == "completed":
            self._item_completed(ev.node_id, item, ev.attempt, ev.output)
        else:
            self._item_failed(ev.node_id, item, self._child_error(ev))
        return None

    def _item_completed(self, node_id: str, item: int, attempt: int, output: Any) -> None:
        rec = self.tx.node(node_id)
        m = rec.map
        assert m is not None
        del m.running[item]
        m.lost.pop(item, None)
        m.done += 1
        self.tx.set_item_output(node_id, rec.visits, item, output)
        self.tx.emit("map.item_completed", node_id, visit=rec.visits, attempt=attempt, item=item)
        self._map_next(node_id)

    def _map_lease_expired(self, ev: LeaseExpired) -> str | None:
        item = ev.item if ev.item is not None else -1
        stale = self._current_item(ev.node_id, ev.visit, item, ev.attempt)
        if stale is not None:
            return stale
        node = self.g.node(ev.node_id)
        if ev.deadline is not None and self.tx.now >= ev.deadline:
            error = ErrorInfo(
                type="TimeoutError",
                node_id=node.id,
                message=f"item {item}: no report within timeout_s={node.timeout_s}",
            )
            self._item_failed(node.id, item, error)
            return None
        rec = self.tx.node(node.id)
        m = rec.map
        assert m is not None
        lost = m.lost[item] = m.lost.get(item, 0) + 1
        self.tx.emit(
            "map.item_lost", node.id, visit=ev.visit, attempt=ev.attempt, item=item, lost=lost
        )
        if lost > MAX_LOST_ATTEMPTS:  # per item, as per node
            error = ErrorInfo(
                type="WorkerLost",
                node_id=node.id,
                retryable=False,
                message=f"item {item}: the worker running it was lost {lost} times",
            )
            self._item_failed(node.id, item, error)
            return None
        self._item_attempt(node, item, ev.attempt + 1)
        return None

    def _map_timer(self, ev: TimerFired) -> str | None:
        """An item's retry timer: its next attempt starts (held while the run is paused)."""
        item = ev.item if ev.item is not None else -1
        if ev.node_id is None or not self.g.has_node(ev.node_id):
            return f"timer for unknown node {ev.node_id!r}"
        stale = self._current_item(ev.node_id, ev.visit, item, -ev.attempt)
        if stale is not None:
            return stale
        self._item_attempt(self.g.node(ev.node_id), item, ev.attempt)
        return None

    def _item_attempt(self, node: Node, item: int, attempt: int) -> None:
        rec = self.tx.node(node.id)
        m = rec.map
        assert m is not None
        m.running[item] = attempt
        if self._paused:
            m.held.append(item)
            self.tx.emit("map.item_held", node.id, visit=rec.visits, attempt=attempt, item=item)
            return
        self._enqueue_item(node, rec.visits, item, attempt)

    def _item_failed(self, node_id: str, item: int, error: ErrorInfo) -> None:
        node = self.g.node(node_id)
        rec = self.tx.node(node_id)
        m = rec.map
        assert m is not None
        attempt = m.running[item]
        policy = self.g.retry_for(node)
        failures = attempt - m.lost.get(item, 0)
        if failures < policy.max_attempts and is_retryable(policy, error.type, error.retryable):
            seed = f"{self.tx.run.run_id}:{node_id}:{rec.visits}:{item}:{attempt}"
            delay = backoff_delay(policy, failures, seed)
            self.tx.emit(
                "map.item_retry_scheduled",
                node_id,
                visit=rec.visits,
                attempt=attempt,
                item=item,
                delay_s=delay,
                error=error.model_dump(mode="json"),
            )
            if delay <= 0:
                self._item_attempt(node, item, attempt + 1)
            else:
                m.running[item] = -(attempt + 1)
                self.tx.actions.append(
                    ScheduleTimer(
                        timer="retry",
                        due_at=self.tx.now + delay,
                        node_id=node_id,
                        visit=rec.visits,
                        attempt=attempt + 1,
                        item=item,
                    )
                )
            return
        del m.running[item]
        m.lost.pop(item, None)
        m.failed += 1
        self.tx.emit(
            "map.item_failed",
            node_id,
            visit=rec.visits,
            attempt=attempt,
            item=item,
            error=error.model_dump(mode="json"),
        )
        if m.failed > m.tolerated:
            message = (
                f"item {item} failed after {attempt} attempt(s): {error.message} "
                f"({m.failed} of {m.total} items failed; tolerated_failures allows {m.tolerated})"
            )
            self._give_up(
                node_id, error.model_copy(update={"message": message, "node_id": node_id})
            )
            return
        self._map_next(node_id)

    def _map_next(self, node_id: str) -> None:
        """After an item ended: start the next ones, or complete the map if all ended."""
        rec = self.tx.node(node_id)
        m = rec.map
        assert m is not None
        if m.done + m.failed < m.total:
            self._map_fill(self.g.node(node_id))
            return
        results = self.tx.item_results(node_id, rec.visits, m.total)
        output = [None if r is MISSING else r for r in results]
        self.tx.drop_items(node_id, rec.visits, m.total)
        self.tx.emit("map.finished", node_id, visit=rec.visits, done=m.done, failed=m.failed)
        self._complete(node_id, rec.visits, output)

    # --- stopping and resuming ----------------------------------------------------------

    def _map_stop(self, node_id: str) -> None:
        """The map is stopped (cancelled, failed, the run ended): cancel its items in flight
        and drop their retry timers; its item fields go."""
        rec = self.tx.node(node_id)
        m = rec.map
        if m is None:
            return
        for _, child in sorted(m.children.items()):
            self._stop_child(child, node_id)
        m.children.clear()
        jobs = "graph" not in self.g.node(node_id).config  # else child runs (cancelled above)
        for item, attempt in sorted(m.running.items()):
            if attempt < 0:
                self.tx.actions.append(
                    DropTimer(
                        timer="retry",
                        node_id=node_id,
                        visit=rec.visits,
                        attempt=-attempt,
                        item=item,
                    )
                )
            elif jobs and item not in m.held:
                self.tx.actions.append(
                    CancelNode(node_id=node_id, visit=rec.visits, attempt=attempt, item=item)
                )
        m.running.clear()
        m.held.clear()
        self.tx.drop_items(node_id, rec.visits, m.total)

    def _map_resume(self, node_id: str) -> None:
        """The run resumes: the map's held items start, and free slots fill."""
        rec = self.tx.node(node_id)
        m = rec.map
        if m is None:
            return
        node = self.g.node(node_id)
        held, m.held = m.held, []
        for item in held:
            self._enqueue_item(node, rec.visits, item, m.running[item])
        self._map_fill(node)
