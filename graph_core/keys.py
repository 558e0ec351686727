"""Every Redis key relaygraph uses, built in one place.

Per-run keys carry the run id as a hash tag (``{run_id}``) so that a run's keys would share a
cluster slot. Redis Cluster is not supported today: the apply script also writes the queue,
timer and index keys, which live in other slots. Keys are built from ids and never parsed
back into ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from graph_core.errors import RelaygraphError

__all__ = ["DEFAULT_PREFIX", "OUTPUT_FIELD_SEP", "Keys", "RunKeys", "check_run_id"]

DEFAULT_PREFIX = "relaygraph"
_RUN_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_\-.:]{1,64}$")


_RUNS_CACHED: Final = 1024  # Keys.run's answers kept (all dropped when full: cheap, bounded)
OUTPUT_FIELD_SEP: Final = "#"  # output_field: node id, this, visit (Lua builds it too)


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is safe to embed in keys; raise otherwise."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise RelaygraphError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '_' or '-'")
    return run_id


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The keys of one run, computed once."""

    # hash: "run" -> RunRecord JSON, "rev" -> revision (int), "stamp" -> random hex, new with
    # every write of the record (an apply expects the rev and stamp it read)
    meta: str
    nodes: str  # hash: node id -> NodeRecord JSON
    outputs: str  # hash: output_field(node, visit) -> output JSON; a map's item_field too
    joins: str  # hash: join_field(node, edge) -> queued branch signals ("t"/"d")
    loops: str  # hash: loop id -> LoopRecord JSON
    active: str  # hash: node id -> visit, the run's live frontier
    events: str  # stream: the run's history
    waits: str  # hash: node id -> wait token (the approval locks of this run)

    @staticmethod
    def output_field(node_id: str, visit: int) -> str:
        return f"{node_id}{OUTPUT_FIELD_SEP}{visit}"

    @staticmethod
    def item_field(node_id: str, visit: int, item: int, kind: str) -> str:
        """A map item's field in the outputs hash: ``node#visit|item|in`` (its input) or
        ``node#visit|item|out`` (its result). Node ids have no ``|``: never an output's."""
        return f"{node_id}{OUTPUT_FIELD_SEP}{visit}|{item}|{kind}"

    @staticmethod
    def join_field(node_id: str, edge_index: int) -> str:
        return f"{node_id}#{edge_index}"

    def all(self) -> tuple[str, ...]:
        return (
            self.meta,
            self.nodes,
            self.outputs,
            self.joins,
            self.loops,
            self.active,
            self.events,
            self.waits,
        )


class Keys:
    """Key builder for one prefix (default ``relaygraph``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not _PREFIX.match(prefix):
            raise RelaygraphError(
                f"invalid key prefix {prefix!r}: use 1-64 letters, digits, '_', '-', '.' or ':'"
            )
        self.prefix = prefix
        self._runs: dict[str, RunKeys] = {}  # ``run``'s latest answers (a job asks 3 times)
        p = prefix
        self.inbox = f"{p}:inbox"  # stream consumed by the dispatchers' group
        self.inbox_group = "dispatchers"
        self.deadletter = f"{p}:deadletter"  # stream of rejected messages, with reasons
        self.approvals_channel = f"{p}:approvals"
        self.events_channel = f"{p}:events"
        self.timers = f"{p}:timers"  # zset: timer member -> due time (ms)
        # zset: LeaseExpired message of a running attempt -> lease expiry (ms); renewed by
        # the worker's heartbeat, moved into the inbox by a dispatcher when it lapses
        self.leases = f"{p}:leases"
        self.inbox_attempts = f"{p}:inbox:attempts"  # hash: entry id -> handling failures
        self.graphs = f"{p}:graphs"  # hash: graph_field(id, version) -> graph JSON
        self.graph_latest = f"{p}:graphs:latest"  # hash: graph id -> latest version
        self.runs_all = f"{p}:runs"  # zset: run id -> created (ms)
        # hash: worker process ("host:pid") -> its registration JSON, while it runs
        self.workers = f"{p}:workers"
        # hash: trigger_field(graph, trigger) -> the newest tick fired (epoch seconds)
        self.triggers_last = f"{p}:triggers:last"
        # hash: limit scope (queue:NAME, type:NAME) -> "max_running|rate|burst"; its
        # companions, all touched by worker/limits.py's scripts only: <limits>:running:<scope>
        # (zset: job id -> when its slot lapses, ms), <limits>:bucket:<scope> (hash: tokens,
        # ts), <limits>:throttled (hash: job id -> "<scope>|<wake key>") and
        # <limits>:throttled:<scope> (zset: job id -> when held back, ms)
        self.limits = f"{p}:limits"
        self.limits_throttled = f"{p}:limits:throttled"

    def approval_seen(self, digest: str) -> str:
        """Marks a published approval as already forwarded to the inbox (or, malformed,
        dead-lettered), so that of all the dispatchers that heard it only one does."""
        return f"{self.approvals_channel}:seen:{digest}"

    @staticmethod
    def trigger_field(graph_id: str, trigger_id: str) -> str:
        """A scheduled trigger's field: trigger ids have no ``#``, so the last one splits."""
        return f"{graph_id}#{trigger_id}"

    def event_graphs(self, event: str) -> str:
        """Set: the graphs whose event trigger names ``event`` (in some version)."""
        return f"{self.prefix}:triggers:event:{event}"

    def child_cancelled(self, run_id: str) -> str:
        """String: a child run its parent cancelled before the child's submission was
        handled; the submission then starts nothing (kept a retention period)."""
        return f"{self.prefix}:child-cancelled:{run_id}"

    def hook_seen(self, digest: str) -> str:
        """String: a webhook call's signature already used (replays are refused)."""
        return f"{self.prefix}:hooks:seen:{digest}"

    def limit_running(self, scope: str) -> str:
        """Zset: the jobs of a limited scope that hold a running slot, job id -> when the
        slot lapses unless renewed (ms, the server's clock)."""
        return f"{self.limits}:running:{scope}"

    def limit_held(self, scope: str) -> str:
        """Zset: the jobs a limit of ``scope`` holds back, job id -> when (ms): a finishing
        job of the scope wakes the oldest."""
        return f"{self.limits_throttled}:{scope}"

    def limit_bucket(self, scope: str) -> str:
        """Hash: a rate-limited scope's token bucket (``tokens``, ``ts`` ms)."""
        return f"{self.limits}:bucket:{scope}"

    def graph_field(self, graph_id: str, version: int) -> str:
        return f"{graph_id}@{version}"

    def runs_by_status(self, status: str) -> str:
        return f"{self.prefix}:runs:{status}"

    def runs_by_graph(self, graph_id: str) -> str:
        """Zset: the runs of one graph (all versions), run id -> created (ms)."""
        return f"{self.prefix}:graph-runs:{graph_id}"

    def idempotency(self, key: str) -> str:
        """String: the id of the run that holds submission key ``key`` (the key verbatim),
        claimed with SET NX and expiring a retention period after the claim."""
        return f"{self.prefix}:idem:{key}"

    def queue(self, name: str) -> str:
        return f"{self.prefix}:queue:{name}"

    def wake(self, queue_name: str) -> str:
        return f"{self.prefix}:wake:{queue_name}"

    def run(self, run_id: str) -> RunKeys:
        known = self._runs.get(run_id) if isinstance(run_id, str) else None
        if known is not None:
            return known
        tag = "{" + check_run_id(run_id) + "}"
        base = f"{self.prefix}:run:{tag}"
        if len(self._runs) >= _RUNS_CACHED:
            self._runs.clear()
        rk = self._runs[run_id] = RunKeys(
            meta=f"{base}:meta",
            nodes=f"{base}:nodes",
            outputs=f"{base}:outputs",
            joins=f"{base}:joins",
            loops=f"{base}:loops",
            active=f"{base}:active",
            events=f"{base}:events",
            waits=f"{base}:waits",
        )
        return rk
