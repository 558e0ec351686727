"""The API process's Prometheus metrics, served at ``GET /metrics``: requests by route and
status, their duration, runs submitted and decisions sent, and the fleet gauges read from
Redis at scrape time (``dispatcher.fleet``), so one scrape target shows the whole fleet."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["ApiMetrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """The counters of one API process, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "relaygraph_api_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "relaygraph_api_request_duration_seconds",
            "Time to the response's start (an event stream: to its first byte).",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.runs_submitted = Counter(
            "relaygraph_api_runs_submitted",
            "Runs created through the API (an idempotent repeat is not counted).",
            ["graph"],
            registry=r,
        )
        self.decisions = Counter(
            "relaygraph_api_decisions",
            "Approvals and rejections sent through the API.",
            ["decision"],
            registry=r,
        )

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)
