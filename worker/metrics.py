"""A worker's Prometheus metrics: per node attempt, its outcome and how long its handler ran,
in a registry of its own, served over HTTP on ``metrics_port`` (docs/observability.md).

Counted in ``execute_node`` once the attempt's report is built: one counter increment and
one histogram observation per job, no Redis command. Without ``metrics_port`` the worker
has no ``WorkerMetrics`` and counts nothing.
"""

from __future__ import annotations

import threading
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from graph_core.errors import RelaygraphError

__all__ = ["DURATION_BUCKETS", "MetricsPortError", "MetricsServer", "WorkerMetrics"]

# Handlers range from no-ops (sub-millisecond) to agents and human-facing calls (minutes).
DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, float("inf"),
)  # fmt: skip


class WorkerMetrics:
    """The counters of one worker process (all its queues), in ``registry`` (a new one by
    default, so that several workers in one process, as in tests, count apart)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["node_type", "queue", "outcome"]
        self.duration = Histogram(
            "relaygraph_node_duration_seconds",
            "Time a node handler ran, per attempt (handlers that ran only).",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.attempts = Counter(
            "relaygraph_node_attempts",
            "Node attempts this worker reported, by outcome (completed, waiting, failed).",
            labels,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def attempt(self, node_type: str, queue: str, outcome: str, handler_s: float | None) -> None:
        """One attempt reported; ``handler_s``: how long its handler ran (None: it did not
        run, e.g. no handler for the type, or a template that did not render)."""
        key = (node_type, queue, outcome)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and checks the values: once per key
            children = self._children[key] = (
                self.attempts.labels(*key),
                self.duration.labels(*key),
            )
        children[0].inc()
        if handler_s is not None:
            children[1].observe(handler_s)


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
