"""Summaries of cProfile data for results.json: the top functions by their own time, and
the time spent in named stages, both per unit of work (a transition, a node)."""

from __future__ import annotations

import pstats
from collections.abc import Sequence
from typing import Any

__all__ = ["DISPATCHER_STAGES", "WORKER_STAGES", "Stage", "summarize"]

# (label, file suffix, function). cProfile counts the time a coroutine is on the stack, so a
# coroutine's cumulative time is its active part, without the time it waits for Redis.
Stage = tuple[str, str, str]

DISPATCHER_STAGES: Sequence[Stage] = (
    ("inbox loop (XREADGROUP + batches)", "dispatcher/service.py", "_inbox_loop"),
    ("handle a batch (all of it)", "dispatcher/service.py", "_handle_batch"),
    ("parse the message", "graph_core/messages.py", "parse_inbox"),
    ("processor: one round of entries", "dispatcher/batch.py", "handle_many"),
    ("events and their graphs", "dispatcher/batch.py", "_batch_events"),
    ("load the runs (or take them from the cache)", "dispatcher/batch.py", "_loaded"),
    ("run cache: a cached run's view", "dispatcher/runcache.py", "view"),
    ("pipelined load of runs + neighbourhoods", "dispatcher/store.py", "load_many"),
    ("compute the transitions", "dispatcher/batch.py", "_compute_many"),
    ("transition: advance()", "graph_core/engine.py", "advance"),
    ("load state advance() asked for", "dispatcher/store.py", "fill_many"),
    ("apply the transitions", "dispatcher/batch.py", "_apply_many"),
    ("prepare an apply (serialize + pack)", "dispatcher/store.py", "prepare"),
    ("serialize the written records", "dispatcher/changes.py", "state_writes"),
    ("pack the change set", "dispatcher/changes.py", "pack_changes"),
    ("pipelined apply.lua calls", "dispatcher/store.py", "apply_many"),
    ("run cache: take over the writes", "dispatcher/runcache.py", "applied"),
    ("one by one (conflicts, unknown runs)", "dispatcher/processor.py", "process"),
    ("acknowledge and announce ignored", "dispatcher/service.py", "_acknowledge"),
    ("timers and leases loop", "dispatcher/service.py", "_timer_loop"),
)

WORKER_STAGES: Sequence[Stage] = (
    ("arq run_job (the whole job but the claim)", "arq/worker.py", "run_job"),
    ("claim (start_jobs)", "worker/waking.py", "start_jobs"),
    ("poll iteration (claims included)", "arq/worker.py", "_poll_iteration"),
    ("wait for work (BLPOP wake-up)", "worker/waking.py", "_wait_for_work"),
    ("relaygraph_run_node (lease + run_node)", "worker/app.py", "relaygraph_run_node"),
    ("run_node: fence, load, render, handler, report", "worker/runner.py", "run_node"),
    ("load_snapshot (preload)", "worker/preload.py", "load_snapshot"),
    ("the handler call", "worker/runner.py", "_run_handler"),
    ("report: XADD", "worker/runner.py", "_send"),
    ("arq finish_job", "arq/worker.py", "finish_job"),
    ("logging (all records)", "logging/__init__.py", "handle"),
    ("lease heartbeat thread", "worker/heartbeat.py", "_run"),
)

TOP = 15


def _where(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    for marker in ("/site-packages/", "/work/main/", "/lib/python3."):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({func})" if line else func


def summarize(
    stats: pstats.Stats, units: int, unit: str, stages: Sequence[Stage], timer: str
) -> dict[str, Any]:
    """Top functions by own time and the stages' cumulative time, in µs per ``unit``."""
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    units = max(units, 1)
    top = sorted(entries.items(), key=lambda kv: -kv[1][2])[:TOP]
    found = {}
    for label, suffix, func in stages:
        cum = sum(v[3] for k, v in entries.items() if k[0].endswith(suffix) and k[2] == func)
        if cum:
            found[label] = cum * 1e6 / units
    total = sum(v[2] for v in entries.values())
    return {
        "timer": timer,
        "unit": unit,
        "units": units,
        "total_us_per_unit": total * 1e6 / units,
        "top_by_own_time": [
            {
                "function": _where(key),
                "calls": v[1],
                "own_us": v[2] * 1e6 / units,
                "cumulative_us": v[3] * 1e6 / units,
            }
            for key, v in top
        ],
        "stages_us": found,
    }
