"""A dispatcher's Prometheus metrics: counters of the transitions it applied, in a registry
of its own, served over HTTP on ``metrics_port`` (docs/observability.md lists them all).

Counting happens after an apply succeeded (``Processor`` and ``BatchHandler``), so an event
applied once is counted once, however many conflicts recomputed it first. It costs one
counter increment per transition and a set lookup per history event; with ``metrics_port``
unset the dispatcher counts into ``NO_METRICS``, which does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Final, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from dispatcher.connect import connect_sync
from dispatcher.fleet import FleetCollector
from graph_core.errors import RelaygraphError
from graph_core.model import Graph
from graph_core.settings import BaseSettings
from graph_core.state import Transition

__all__ = [
    "NO_METRICS",
    "DispatcherMetrics",
    "MetricsPortError",
    "MetricsServer",
    "NoMetrics",
    "Recorder",
    "serving",
]

log = logging.getLogger("relaygraph.metrics")

FLEET_TIMEOUT_S: Final = 1.0  # a scrape waits at most this long per Redis round trip

_STARTED: Final = "run.submitted"
_RETRY: Final = "node.retry_scheduled"
_FINISHED: Final = {
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
    "run.compensated": "compensated",
    "run.compensation_failed": "compensation_failed",
}
_COUNTED: Final = frozenset({_STARTED, _RETRY, *_FINISHED})


class Recorder(Protocol):
    """What the dispatcher reports as it goes; ``DispatcherMetrics`` or ``NO_METRICS``."""

    def applied(self, graph: Graph, transition: Transition) -> None:
        """A transition of a run of ``graph`` was applied (once per applied event)."""

    def ignored(self, kind: str) -> None:
        """A well-formed inbox message of ``kind`` changed nothing."""

    def dead_lettered(self, source: str) -> None:
        """A message from ``source`` (``inbox``, ``approvals``) went to the dead letters."""


class NoMetrics:
    """The recorder of a dispatcher without ``metrics_port``: it does nothing."""

    def applied(self, graph: Graph, transition: Transition) -> None:
        pass

    def ignored(self, kind: str) -> None:
        pass

    def dead_lettered(self, source: str) -> None:
        pass


NO_METRICS: Final = NoMetrics()


class DispatcherMetrics:
    """The counters of one dispatcher process, in ``registry`` (a new one by default, so
    that several dispatchers in one process, as in tests, count apart)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.transitions = Counter(
            "relaygraph_transitions", "Events applied to runs (transitions).", registry=r
        )
        self.runs_started = Counter(
            "relaygraph_runs_started", "Runs created (run.submitted).", ["graph"], registry=r
        )
        self.runs_finished = Counter(
            "relaygraph_runs_finished",
            "Runs finished (run.completed, run.failed, run.cancelled).",
            ["graph", "status"],
            registry=r,
        )
        self.node_retries = Counter(
            "relaygraph_node_retries",
            "Failed node attempts scheduled for a retry (node.retry_scheduled).",
            ["graph", "node_type"],
            registry=r,
        )
        self.dead_letters = Counter(
            "relaygraph_dead_letters",
            "Messages this dispatcher moved to the dead-letter stream.",
            ["source"],
            registry=r,
        )
        self.inbox_ignored = Counter(
            "relaygraph_inbox_ignored",
            "Well-formed inbox messages that changed nothing (event.ignored), by kind.",
            ["kind"],
            registry=r,
        )
        self.shards = Gauge(
            "relaygraph_shards_served",
            "Shards this dispatcher serves (sharded layout; one server: 1 assigned), by how: "
            "assigned to it, or taken over while nobody else served them.",
            ["how"],
            registry=r,
        )
        self._children: dict[tuple[object, ...], Counter] = {}

    def applied(self, graph: Graph, transition: Transition) -> None:
        self.transitions.inc()
        for event in transition.history:
            kind = event.type
            if kind not in _COUNTED:
                continue
            if kind == _STARTED:
                self._child(self.runs_started, graph.id).inc()
            elif kind == _RETRY:
                node_id = event.node_id
                node_type = graph.node(node_id).type if node_id and graph.has_node(node_id) else ""
                self._child(self.node_retries, graph.id, node_type).inc()
            else:
                self._child(self.runs_finished, graph.id, _FINISHED[kind]).inc()

    def _child(self, counter: Counter, *labels: str) -> Counter:
        # labels() takes a lock and checks the values: once per counter and labels
        key = (id(counter), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        return child

    def ignored(self, kind: str) -> None:
        self._child(self.inbox_ignored, kind).inc()

    def shards_served(self, assigned: int, taken: int) -> None:
        """The shards served now, of each kind (``dispatcher.ownership``)."""
        self.shards.labels("assigned").set(assigned)
        self.shards.labels("taken").set(taken)

    def dead_lettered(self, source: str) -> None:
        self._child(self.dead_letters, source).inc()


class MetricsPortError(RelaygraphError):
    """The metrics port cannot be listened on (taken, or not allowed)."""

    def __init__(self, port: int, error: OSError) -> None:
        self.port = port
        self.error = error
        super().__init__(f"cannot serve metrics on port {port}: {error.strerror or error}")


class MetricsServer:
    """The Prometheus exposition of ``registry`` on ``port`` (every address), served by a
    thread of its own until ``close``: a scrape never waits for the event loop."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
        try:
            server, thread = start_http_server(port, addr, registry=registry)
        except OSError as e:
            raise MetricsPortError(port, e) from e
        self.port = port
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def serving(metrics: DispatcherMetrics | None, settings: BaseSettings) -> Iterator[None]:
    """Serve ``metrics`` on ``settings.metrics_port`` (if both are set) while in the block,
    with the fleet gauges (``FleetCollector``) read through a client of its own on
    ``settings.redis_url`` (none without a URL: a dispatcher given only a client)."""
    port = settings.metrics_port
    if metrics is None or port is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        if settings.redis_url is not None:
            redis = connect_sync(
                settings.redis_url,
                socket_timeout=FLEET_TIMEOUT_S,
                socket_connect_timeout=FLEET_TIMEOUT_S,
            )
            stack.callback(redis.close)
            collector = FleetCollector(redis, settings.keys)
            metrics.registry.register(collector)
            stack.callback(metrics.registry.unregister, collector)
        server = MetricsServer(metrics.registry, port)
        stack.callback(server.close)
        log.info("serving metrics on port %d", port)
        yield
