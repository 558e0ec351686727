"""Turning raw measurements into figures, ratios, goal checks, a table and results.json.

Pure code (no I/O but ``write_json``), so it is unit-tested without running a benchmark.

``raw`` is ``{scenario: {system: measurement}}``, as the scenario modules fill it. A figure is
one line of the table: our value, each peer's value from the same run, and the *advantage*
over each peer: how many times better ours is, whatever the direction of the metric (> 1 means
ours is better: a higher rate, or a lower latency, cost or memory).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Figure",
    "Goal",
    "advantage",
    "build_figures",
    "cpu_per_node",
    "format_notes",
    "format_profile",
    "format_table",
    "format_value",
    "goal_status",
    "percentile",
    "profile_sections",
    "rates",
    "results_document",
    "scale_entry",
    "summarize_ms",
    "write_json",
]

Better = Literal["higher", "lower"]


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99, mean and max of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms),
        "max_ms": max(ms),
    }


def cpu_per_node(cpu: Mapping[str, float], nodes: int) -> dict[str, float]:
    """CPU seconds per process group -> microseconds per node, plus their ``total``."""
    per = {name: seconds * 1e6 / nodes for name, seconds in cpu.items()}
    per["total"] = sum(per.values())
    return per


def scale_entry(small: int, large: int, small_s: float, large_s: float) -> dict[str, Any]:
    """Per-node seconds of a small and a large shape -> ms per node and their ratio."""
    return {
        "small": small,
        "large": large,
        "small_ms_per_node": small_s * 1000,
        "large_ms_per_node": large_s * 1000,
        "ratio": large_s / small_s if small_s > 0 else None,
    }


def rates(shape: str, size: int, nodes: int, seconds_per_node: float) -> dict[str, Any]:
    """In-process rates of one shape; a loop of ``size`` iterations also per iteration (an
    engine may need more than one node per iteration)."""
    out: dict[str, Any] = {"size": size, "nodes": nodes, "nodes_per_s": 1 / seconds_per_node}
    if shape == "loop":
        out["iterations_per_s"] = size / (seconds_per_node * nodes)
    return out


# --- figures ------------------------------------------------------------------------------


def advantage(ours: float | None, peer: float | None, better: Better) -> float | None:
    """How many times better ours is than the peer (> 1: ours better); None if unknown."""
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return None
    return ours / peer if better == "higher" else peer / ours


@dataclass(frozen=True)
class Goal:
    """A target from the performance issue. ``versus``: compare ``ours / versus`` (a raw
    ratio of the two values, as in ">= 0.6x raw arq's jobs/s") instead of ours itself."""

    text: str
    kind: Literal["min", "max"]
    target: float
    versus: str | None = None


@dataclass
class Figure:
    scenario: str
    unit: str
    better: Better
    ours: float | None
    peers: list[tuple[str, float | None]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    note: str = ""

    def peer(self, name: str) -> float | None:
        return dict(self.peers).get(name)

    def advantages(self) -> dict[str, float | None]:
        return {name: advantage(self.ours, value, self.better) for name, value in self.peers}


def goal_status(figure: Figure, goal: Goal) -> bool | None:
    """Whether ``figure`` meets ``goal``; None when a value it needs is missing."""
    value = figure.ours
    if value is None:
        return None
    if goal.versus is not None:
        peer = figure.peer(goal.versus)
        if peer is None or peer <= 0:
            return None
        value = value / peer
    return value >= goal.target if goal.kind == "min" else value <= goal.target


def _get(raw: Mapping[str, Any], *path: str) -> Any:
    node: Any = raw
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def build_figures(raw: Mapping[str, Any]) -> list[Figure]:
    """Every figure the measurements in ``raw`` allow (missing scenarios are left out)."""
    figures: list[Figure] = []
    figures += _calibration(raw)
    figures += _inprocess(raw)
    figures += _dispatcher_cpu(raw)
    figures += _hop(raw)
    figures += _throughput(raw)
    figures += _memory(raw)
    figures += _scaling(raw)
    figures += _concurrent(raw)
    figures += _idle(raw)
    figures += _api(raw)
    figures += _delay(raw)
    figures += _map(raw)
    return figures


_INPROCESS_NOTES = {
    "chain": "pure engine, no Redis; LoopGraph's Scheduler with SemaphorePolicy(limit=10)",
    "loop": "per iteration: LoopGraph needs a task and a SWITCH node, ours one node and a "
    "conditional edge",
    "fanout": "LoopGraph: an AGGREGATE node joins the branches",
}


def _inprocess(raw: Mapping[str, Any]) -> list[Figure]:
    data = raw.get("inprocess")
    if not data:
        return []
    shapes = (
        ("chain", "in-process: chain of {} nodes", "nodes_per_s", "nodes/s"),
        ("loop", "in-process: loop of {} iterations", "iterations_per_s", "iter/s"),
        ("fanout", "in-process: {}-way fan-out/join", "nodes_per_s", "nodes/s"),
    )
    figures = []
    for shape, label, key, unit in shapes:
        if _get(data, "ours", shape) is None:
            continue
        size = _get(data, "ours", shape, "size") or _get(data, "ours", shape, "nodes")
        figures.append(
            Figure(
                label.format(size) + ", run_local",
                unit,
                "higher",
                _num(_get(data, "ours", shape, key)),
                [
                    ("ours advance() only", _num(_get(data, "ours-advance", shape, key))),
                    ("LoopGraph", _num(_get(data, "loopgraph", shape, key))),
                ],
                note=_INPROCESS_NOTES[shape],
            )
        )
    return figures


def _calibration(raw: Mapping[str, Any]) -> list[Figure]:
    data = raw.get("calibration")
    if not data:
        return []
    walls = [v for v in (_num(_get(data, phase, "wall_us")) for phase in data) if v is not None]
    if not walls:
        return []
    return [
        Figure(
            "one Redis round trip (async PING), median of phases",
            "µs",
            "lower",
            percentile(walls, 50),
            note=f"as each phase started: {format_value(min(walls))} to "
            f"{format_value(max(walls))} µs; the machine's speed drifts, compare within a phase",
        )
    ]


def _dispatcher_cpu(raw: Mapping[str, Any]) -> list[Figure]:
    data = _get(raw, "dispatcher-cpu", "ours")
    if not data:
        return []
    rt = data.get("round_trip") or {}
    calibration = []
    if rt:
        calibration.append(
            Figure(
                "one Redis round trip (async PING)",
                "µs",
                "lower",
                _num(rt.get("wall_us")),
                note=(
                    f"CPU: client {_fmt(rt.get('client_cpu_us'))} µs, "
                    f"server {_fmt(rt.get('server_cpu_us'))} µs: the machine's unit cost"
                ),
            )
        )
    return [
        *calibration,
        Figure(
            "dispatcher CPU per transition",
            "µs",
            "lower",
            _num(data.get("cpu_us_per_transition")),
            note=f"{data.get('transitions')} report transitions, in-process, no workers",
        ),
        Figure(
            "dispatcher wall time per transition",
            "µs",
            "lower",
            _num(data.get("wall_us_per_transition")),
            note="one dispatcher, sequential round trips included",
        ),
    ]


_HOP_PEERS = (("arq poll 0.5 s", "arq@0.5"), ("arq poll 0.01 s", "arq@0.01"), ("Celery", "celery"))


_HOP_ROUNDS = (("ours", "ours"), ("arq 0.01 s", "arq@0.01"), ("Celery", "celery"))


def _hop(raw: Mapping[str, Any]) -> list[Figure]:
    data = raw.get("hop")
    if not data:
        return []
    figures = []
    for stat, label, goal in (
        ("median_ms", "median", 3.0),
        ("p99_ms", "p99", 10.0),
        ("mean_ms", "mean", None),
    ):
        figures.append(
            Figure(
                f"hop latency {label}",
                "ms",
                "lower",
                _num(_get(data, "ours", stat)),
                [(name, _num(_get(data, key, stat))) for name, key in _HOP_PEERS],
                [Goal(f"<= {goal:g} ms", "max", goal)] if goal is not None else [],
                note="report -> next handler start along a chain"
                + (_rounds_note(raw, "hop", _HOP_ROUNDS) if stat == "median_ms" else ""),
            )
        )
    return figures


def _rounds_note(raw: Mapping[str, Any], scenario: str, systems: Sequence[tuple[str, str]]) -> str:
    """Every round's value per system, when there was more than one round."""
    rounds = _get(raw, "rounds", scenario) or {}
    parts = []
    for label, key in systems:
        values = [_num(v) for v in rounds.get(key, [])]
        if len(values) > 1:
            parts.append(f"{label} " + "/".join(format_value(v) for v in values))
    return "; best of rounds: " + ", ".join(parts) if parts else ""


def _throughput(raw: Mapping[str, Any]) -> list[Figure]:
    data = raw.get("throughput")
    if not data:
        return []
    figures = [
        Figure(
            "throughput, no-op nodes",
            "nodes/s",
            "higher",
            _num(_get(data, "ours", "per_s")),
            [
                ("raw arq", _num(_get(data, "arq", "per_s"))),
                ("Celery", _num(_get(data, "celery", "per_s"))),
            ],
            [
                Goal(">= 0.6x raw arq", "min", 0.6, versus="raw arq"),
                Goal(">= 2x Celery", "min", 2.0, versus="Celery"),
            ],
            note="1 dispatcher + workers; 10-node chains (arq: single jobs)"
            + _rounds_note(
                raw, "throughput", (("ours", "ours"), ("arq", "arq"), ("Celery", "celery"))
            ),
        )
    ]
    cpu = [_num(_get(data, s, "cpu_us_per_node", "total")) for s in ("ours", "arq", "celery")]
    if any(v is not None for v in cpu):
        figures.append(
            Figure(
                "CPU per node, all processes",
                "µs",
                "lower",
                cpu[0],
                [("raw arq", cpu[1]), ("Celery", cpu[2])],
                note="server + dispatcher + workers (+ submitting driver)",
            )
        )
    return figures


def _memory(raw: Mapping[str, Any]) -> list[Figure]:
    data = raw.get("memory")
    if not data:
        return []
    return [
        Figure(
            "Redis memory per finished 10-node run",
            "bytes",
            "lower",
            _num(_get(data, "ours", "bytes_per_run")),
            [
                ("ours without inbox", _num(_get(data, "ours", "bytes_per_run_without_inbox"))),
                ("raw arq (10 jobs)", _num(_get(data, "arq", "bytes_per_run"))),
                ("Celery (10-task chain)", _num(_get(data, "celery", "bytes_per_run"))),
            ],
            note="server memory less client buffers, before/after 1 round of runs; kept: "
            "ours 7 d (inbox until its next trim), arq results 1 h, Celery results 1 d",
        )
    ]


_SHAPES = (("chain", "chain"), ("fanout", "fan-out/join"), ("loop", "loop"))
_SCALE_PEERS = (
    ("Celery", "celery"),
    ("LoopGraph (in-process)", "loopgraph"),
    ("ours run_local", "ours-inproc"),
)


def _scaling(raw: Mapping[str, Any]) -> list[Figure]:
    data = raw.get("scaling")
    if not data:
        return []
    figures = []
    for shape, label in _SHAPES:
        ours = _get(data, "ours", shape)
        if not ours:
            continue
        large, small = ours.get("large"), ours.get("small")
        figures.append(
            Figure(
                f"scaling: {label}, per-node cost {large} vs {small}",
                "ratio",
                "lower",
                _num(ours.get("ratio")),
                [(name, _num(_get(data, key, shape, "ratio"))) for name, key in _SCALE_PEERS],
                [Goal("<= 1.5", "max", 1.5)],
                note=(
                    f"ours {_fmt_ms(ours.get('small_ms_per_node'))} -> "
                    f"{_fmt_ms(ours.get('large_ms_per_node'))} ms/node"
                ),
            )
        )
    return figures


def _fmt_ms(value: Any) -> str:
    v = _num(value)
    return "-" if v is None else f"{v:.2f}"


def _concurrent(raw: Mapping[str, Any]) -> list[Figure]:
    data = _get(raw, "concurrent", "ours")
    if not data:
        return []
    runs = _num(data.get("runs"))
    return [
        Figure(
            f"concurrent runs completed (of {data.get('runs')})",
            "runs",
            "higher",
            _num(data.get("completed")),
            goals=[Goal("all", "min", runs or 0.0)],
            note=f"start -> one job -> end, all submitted at once; {_fmt(data.get('wall_s'))} s",
        ),
        Figure(
            "concurrent runs, completion rate",
            "runs/s",
            "higher",
            _num(data.get("runs_per_s")),
        ),
    ]


def _fmt(value: Any) -> str:
    v = _num(value)
    return "-" if v is None else format_value(v)


def _idle(raw: Mapping[str, Any]) -> list[Figure]:
    data = raw.get("idle")
    if not data:
        return []
    return [
        Figure(
            "idle worker CPU",
            "% core",
            "lower",
            _num(_get(data, "ours-worker", "cpu_pct")),
            [
                ("arq poll 0.01 s", _num(_get(data, "arq@0.01", "cpu_pct"))),
                ("arq poll 0.5 s", _num(_get(data, "arq@0.5", "cpu_pct"))),
                ("Celery", _num(_get(data, "celery", "cpu_pct"))),
            ],
            [Goal("< 2% of a core", "max", 2.0)],
        ),
        Figure(
            "idle dispatcher CPU",
            "% core",
            "lower",
            _num(_get(data, "ours-dispatcher", "cpu_pct")),
        ),
    ]


_CLIENT = "WorkflowClient"


def _api(raw: Mapping[str, Any]) -> list[Figure]:
    """The HTTP API against the Python client: "ours" is the API, the peer the client."""
    data = raw.get("api")
    if not data:
        return []
    figures = []
    submit = _get(data, "http", "submit") or {}
    client_submit = _get(data, "client", "submit") or {}
    if submit:
        blocks = "/".join(format_value(_num(v)) for v in submit.get("blocks_per_s") or [])
        client_blocks = "/".join(
            format_value(_num(v)) for v in client_submit.get("blocks_per_s") or []
        )
        figures.append(
            Figure(
                f"HTTP API: submits, POST /v1/runs, {submit.get('in_flight')} in flight",
                "runs/s",
                "higher",
                _num(submit.get("per_s")),
                [(f"{_CLIENT}.submit", _num(client_submit.get("per_s")))],
                [Goal(">= 1,000/s", "min", 1000.0)],
                note=f"one uvicorn process, httpx; {submit.get('submits')} submits a path, no "
                f"dispatcher running; blocks: HTTP {blocks}, client {client_blocks}",
            )
        )
        cpu = submit.get("cpu_us_per_submit") or {}
        client_cpu = client_submit.get("cpu_us_per_submit") or {}
        figures.append(
            Figure(
                "HTTP API: CPU per submit, all processes",
                "µs",
                "lower",
                _num(cpu.get("total")),
                [(f"{_CLIENT}.submit", _num(client_cpu.get("total")))],
                note=f"API process {_fmt(cpu.get('api'))}, driver (httpx) "
                f"{_fmt(cpu.get('driver'))}, server {_fmt(cpu.get('server'))} µs; "
                f"client: driver {_fmt(client_cpu.get('driver'))}, "
                f"server {_fmt(client_cpu.get('server'))} µs; Redis commands per submit "
                f"(script-internal included): HTTP {_commands(submit)}, "
                f"client {_commands(client_submit)}",
            )
        )
    figures += _first_event(data)
    return figures


def _commands(submit: Mapping[str, Any]) -> str:
    calls = [_num(v) for v in (submit.get("commands_per_submit") or {}).values()]
    return _fmt(sum(v for v in calls if v is not None)) if calls else "-"


def _first_event(data: Mapping[str, Any]) -> list[Figure]:
    http, client = _get(data, "http", "first_event"), _get(data, "client", "first_event")
    if not http:
        return []
    peer = f"{_CLIENT} EventStream"
    segments = http.get("segments") or {}
    client_segments = _get(client, "segments") or {}
    split = "submit", "submit done -> first event"
    figures = [
        Figure(
            "HTTP API: submit -> first SSE event, median",
            "ms",
            "lower",
            _num(http.get("median_ms")),
            [(peer, _num(_get(client, "median_ms")))],
            note=f"{http.get('n')} samples a path, alternating; first event "
            f"{http.get('first_event')}, written by 1 dispatcher; medians: HTTP POST "
            f"{_fmt(_get(segments, split[0], 'median_ms'))} ms, then GET .../events to its "
            f"first event {_fmt(_get(segments, split[1], 'median_ms'))} ms; client (subscribed "
            f"before the submit): submit {_fmt(_get(client_segments, split[0], 'median_ms'))} "
            f"ms, then {_fmt(_get(client_segments, split[1], 'median_ms'))} ms",
        ),
        Figure(
            "HTTP API: submit -> first SSE event, p99",
            "ms",
            "lower",
            _num(http.get("p99_ms")),
            [(peer, _num(_get(client, "p99_ms")))],
        ),
    ]
    overhead = {
        stat: _difference(http.get(stat), _get(client, stat)) for stat in ("median_ms", "p99_ms")
    }
    if overhead["median_ms"] is not None:
        figures.append(
            Figure(
                "HTTP API: first-event overhead over the client, median",
                "ms",
                "lower",
                overhead["median_ms"],
                goals=[Goal("<= 1 ms", "max", 1.0)],
                note=f"median HTTP - median client; p99: {_fmt(overhead['p99_ms'])} ms",
            )
        )
    return figures


_FIRED_DUE = "delay accuracy (fired \N{MINUS SIGN} due)"  # the wording
_DELAY_GOAL = Goal("within 1 s", "max", 1000.0)  # a sanity bound: the issue gives no number


def _delay(raw: Mapping[str, Any]) -> list[Figure]:
    """Delay nodes: fired - due (p50, p99), and the dispatcher's CPU while delays wait."""
    accuracy = _get(raw, "delay", "ours", "accuracy")
    idle = _get(raw, "delay", "ours", "idle")
    figures = []
    if accuracy:
        shortest, longest = accuracy.get("delay_s") or (None, None)
        figures += [
            Figure(
                f"{_FIRED_DUE}, p50",
                "ms",
                "lower",
                _num(accuracy.get("median_ms")),
                goals=[_DELAY_GOAL],
                note=f"{accuracy.get('runs')} runs of start -> delay ({_fmt(shortest)}-"
                f"{_fmt(longest)} s) -> end submitted at once, 1 dispatcher, no workers; "
                f"node.completed at - node.delayed due_at; min {_fmt(accuracy.get('min_ms'))}, "
                f"mean {_fmt(accuracy.get('mean_ms'))} ms" + _early(accuracy),
            ),
            Figure(
                f"{_FIRED_DUE}, p99",
                "ms",
                "lower",
                _num(accuracy.get("p99_ms")),
                goals=[_DELAY_GOAL],
                note=f"max {_fmt(accuracy.get('max_ms'))} ms; dispatcher CPU from the submits "
                f"to the last completion, its wake-ups between timers included: "
                f"{_fmt(accuracy.get('dispatcher_cpu_us_per_run'))} µs per run",
            ),
        ]
    if idle:
        figures.append(
            Figure(
                f"idle dispatcher CPU, {idle.get('pending')} delays pending",
                "% core",
                "lower",
                _num(idle.get("cpu_pct")),
                [("nothing pending", _num(idle.get("nothing_pending_cpu_pct")))],
                note=f"over {_fmt(idle.get('window_s'))} s each, nothing else happening "
                f"(one CPU tick: {_fmt(idle.get('cpu_tick_pct'))}% of a core); "
                f"{idle.get('timers_pending')} timers in the zset, "
                f"{idle.get('timers_left_after_cancel')} left after cancelling their runs",
            )
        )
    return figures


_MAP_GOAL = Goal("<= 1.5x", "max", 1.5)  # the issue: cost per item at 10,000 vs 10 items


def _map(raw: Mapping[str, Any]) -> list[Figure]:
    """Map nodes: cost per item of one large map against many small ones, memory per item."""
    cost = _get(raw, "map", "ours", "cost")
    memory = _get(raw, "map", "ours", "memory")
    figures: list[Figure] = []
    if cost:
        small, large = cost.get("small") or {}, cost.get("large") or {}
        n, big = _count(small.get("items_per_run")), _count(large.get("items_per_run"))
        where = (
            f"{small.get('runs')} runs of a {n}-item map (half before, half after) vs 1 run of "
            f"a {big}-item map, max_concurrency {cost.get('max_concurrency')}, 1 dispatcher + "
            f"workers"
        )
        figures += [
            Figure(
                f"map: CPU per item, {big} vs {n} items",
                "ratio",
                "lower",
                _num(cost.get("cpu_ratio")),
                goals=[_MAP_GOAL],
                note=f"{where}; server + dispatcher + workers per item, whole runs (submit, "
                f"make, end) included: {n} items {_cpu_split(small)}, {big} items "
                f"{_cpu_split(large)}; the map alone (runs without a map taken out): "
                f"{_fmt(_get(small, 'map_only', 'cpu_us_per_item'))} -> "
                f"{_fmt(_get(large, 'map_only', 'cpu_us_per_item'))} µs, ratio "
                f"{_fmt(cost.get('map_only_cpu_ratio'))}",
            ),
            Figure(
                f"map: CPU per item, {big}-item map",
                "µs",
                "lower",
                _num(_get(large, "cpu_us_per_item", "total")),
                [(f"{n}-item maps", _num(_get(small, "cpu_us_per_item", "total")))],
                note="server + dispatcher + workers, from the submits to the last completion",
            ),
            Figure(
                f"map: Redis commands per item, {big} vs {n} items",
                "ratio",
                "lower",
                _num(cost.get("commands_ratio")),
                note=f"script-internal calls included: {_fmt(small.get('commands_per_item'))} "
                f"-> {_fmt(large.get('commands_per_item'))} per item; bytes the server sent per "
                f"item: {_fmt(_get(small, 'net_bytes_per_item', 'out'))} -> "
                f"{_fmt(_get(large, 'net_bytes_per_item', 'out'))}, received: "
                f"{_fmt(_get(small, 'net_bytes_per_item', 'in'))} -> "
                f"{_fmt(_get(large, 'net_bytes_per_item', 'in'))}",
            ),
            Figure(
                f"map: items/s, {big}-item map",
                "items/s",
                "higher",
                _num(large.get("items_per_s")),
                [(f"{n}-item maps", _num(small.get("items_per_s")))],
                note=f"{big} items in {_fmt(large.get('wall_s'))} s; {n}-item maps: "
                f"{small.get('items')} items in {_fmt(small.get('wall_s'))} s",
            ),
        ]
    if memory:
        start = memory.get("at_start") or {}
        items = _count(memory.get("items"))
        first = start.get("keys_per_item") or {}
        after = memory.get("after_keys_per_item") or {}
        trimmed = " (the dispatcher trimmed the inbox meanwhile)"
        figures += [
            Figure(
                f"map: Redis memory per item as a {items}-item map starts",
                "bytes",
                "lower",
                _num(start.get("keys_bytes_per_item")),
                [
                    ("server used_memory", _num(start.get("used_memory_per_item"))),
                    ("run's keys at their peak", _num(memory.get("peak_keys_bytes_per_item"))),
                ],
                note=f"MEMORY USAGE of the run's keys and the inbox's growth, first seen "
                f"running {_fmt_ms(_ms(start.get('seconds_after_submit')))} ms after the "
                f"submit ({start.get('items_done')} items done, {start.get('items_started')} "
                f"started): outputs hash {_fmt(first.get('outputs'))} (the item inputs, one "
                f"field each, and make's list), history {_fmt(first.get('events'))}, inbox "
                f"{_fmt(first.get('inbox'))}; server used_memory (allocated less client "
                f"buffers) against before the submit, peak "
                f"{_fmt(memory.get('peak_used_memory_per_item'))}",
            ),
            Figure(
                f"map: Redis memory per item left after a {items}-item map",
                "bytes",
                "lower",
                _num(memory.get("after_keys_bytes_per_item")),
                [
                    ("without inbox", _num(memory.get("after_keys_bytes_per_item_without_inbox"))),
                    ("server used_memory", _num(memory.get("after_used_memory_per_item"))),
                ],
                note=f"MEMORY USAGE per item: history {_fmt(after.get('events'))} "
                f"({memory.get('history_entries')} entries), outputs hash "
                f"{_fmt(after.get('outputs'))} (make's list, the map's result list and end's "
                f"copy of it), run record {_fmt(after.get('meta'))} (the run's output), inbox "
                f"{_fmt(after.get('inbox'))} (until its next trim)"
                + (trimmed if memory.get("inbox_trimmed_meanwhile") else "")
                + f"; item fields left: {memory.get('item_fields_left')}",
            ),
        ]
    return figures


def _count(value: Any) -> str:
    v = _num(value)
    return "?" if v is None else f"{v:.0f}"


def _ms(seconds: Any) -> float | None:
    v = _num(seconds)
    return None if v is None else v * 1000


def _cpu_split(case: Mapping[str, Any]) -> str:
    cpu = case.get("cpu_us_per_item") or {}
    return (
        f"{_fmt(cpu.get('total'))} µs (server {_fmt(cpu.get('server'))}, dispatcher "
        f"{_fmt(cpu.get('dispatcher'))}, workers {_fmt(cpu.get('workers'))})"
    )


def _early(accuracy: Mapping[str, Any]) -> str:
    earliest = _num(accuracy.get("min_ms"))
    if earliest is None or earliest >= 0:
        return ""
    return " (below 0: before due_at; the timers zset keeps due times in whole ms, truncated)"


def _difference(a: Any, b: Any) -> float | None:
    x, y = _num(a), _num(b)
    return None if x is None or y is None else x - y


# --- rendering ----------------------------------------------------------------------------


def format_value(value: float | None) -> str:
    """A compact number: thousands separators from 100 on, fewer decimals as it grows."""
    if value is None or math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _format_advantage(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _goal_text(figure: Figure) -> str:
    parts = []
    for goal in figure.goals:
        status = goal_status(figure, goal)
        mark = {True: "met", False: "MISSED", None: "n/a"}[status]
        parts.append(f"{goal.text}: {mark}")
    return "; ".join(parts)


HEADERS = ("scenario", "unit", "ours", "peer", "peer value", "ours vs peer", "goal")


def table_rows(figures: Iterable[Figure]) -> list[tuple[str, ...]]:
    """One row per (figure, peer); a figure without peers is one row."""
    rows: list[tuple[str, ...]] = []
    for f in figures:
        advantages = f.advantages()
        peers = f.peers or [("", None)]
        for i, (name, value) in enumerate(peers):
            first = i == 0
            rows.append(
                (
                    f.scenario if first else "",
                    f.unit if first else "",
                    format_value(f.ours) if first else "",
                    name,
                    format_value(value) if name else "",
                    _format_advantage(advantages.get(name)) if name else "",
                    _goal_text(f) if first else "",
                )
            )
    return rows


def format_table(figures: Iterable[Figure], *, markdown: bool = False) -> str:
    """The figures as an aligned text table, or a Markdown table."""
    rows = table_rows(figures)
    if markdown:
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    numeric = {2, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(HEADERS), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append("ours vs peer: how many times better ours is (> 1: ours better).")
    return "\n".join(out)


def format_notes(figures: Iterable[Figure], *, markdown: bool = False) -> str:
    """One line per figure that carries a note."""
    bullet = "- " if markdown else "  "
    return "\n".join(f"{bullet}{f.scenario}: {f.note}" for f in figures if f.note)


def profile_sections(raw: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The profiles in ``raw`` worth printing, with a title each."""
    sections: list[tuple[str, Mapping[str, Any]]] = []
    cpu = _get(raw, "dispatcher-cpu", "ours", "profile")
    if cpu:
        sections.append(("Dispatcher, in-process (where a transition's time goes)", cpu))
    for name, summary in (raw.get("profiles") or {}).items():
        sections.append((f"Process profile: {name}", summary))
    return sections


def format_profile(summary: Mapping[str, Any], top: int = 10) -> str:
    """Stage times and the top functions of a profile summary (``bench.profiles``)."""
    unit = summary.get("unit", "unit")
    lines = [f"  per {unit} ({summary.get('timer', '')}):"]
    total = _num(summary.get("total_us_per_unit"))
    if total is not None:
        lines.append(f"  {format_value(total):>9} µs  everything profiled")
    for label, us in (summary.get("stages_us") or {}).items():
        lines.append(f"  {format_value(_num(us)):>9} µs  {label}")
    lines.append(f"  top functions by own time (µs per {unit}: own / cumulative):")
    for row in (summary.get("top_by_own_time") or [])[:top]:
        own = format_value(_num(row.get("own_us")))
        cum = format_value(_num(row.get("cumulative_us")))
        lines.append(f"  {own:>9} / {cum:>9}  {row['function']}")
    return "\n".join(lines)


def results_document(
    raw: Mapping[str, Any], figures: Sequence[Figure], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """What ``results.json`` holds: meta, the figures (with ratios and goals) and the raw data."""
    return {
        "meta": dict(meta),
        "figures": [
            {
                **{k: v for k, v in asdict(f).items() if k not in ("peers", "goals")},
                "peers": [
                    {
                        "name": name,
                        "value": value,
                        "ours_vs_peer": advantage(f.ours, value, f.better),
                    }
                    for name, value in f.peers
                ],
                "goals": [{**asdict(goal), "met": goal_status(f, goal)} for goal in f.goals],
            }
            for f in figures
        ],
        "raw": raw,
    }


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
