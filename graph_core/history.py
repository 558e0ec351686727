"""A run's history as a table of steps: what ``relaygraph history`` prints (seed 001's log view).

One row per history event, oldest first: the step number, the node and its visit, the event,
the output keys that the event added or changed, and how long the node's attempt took. Pure:
the caller reads the history stream and the outputs the steps name (``output_visits``).

- *keys changed*: for ``node.completed`` (the event that stores a visit's output, also after
  an approval), the top-level keys of that output that the node's
  previous visit did not have or had with another value, as ``<node>.output.<key>``; a
  non-object output that changed is ``<node>.output`` (a first output of ``null``, as
  ``start`` and ``end`` have, changes nothing). The run's input shows as ``input.<key>``
  on ``run.submitted``.
- *duration*: for an event that ends a node's attempt, the seconds since that attempt was
  enqueued (queueing and handler time together, as the dispatcher saw them); for the event
  that ends the run, the seconds since it was submitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["OUTPUT_EVENTS", "HistoryStep", "history_steps", "output_visits"]

#: Events that store the node's output for that visit.
OUTPUT_EVENTS = frozenset({"node.completed"})
# Events that end one attempt of a node (its duration runs from the attempt's enqueue).
_ATTEMPT_ENDS = OUTPUT_EVENTS | {
    "node.failed",
    "node.waiting",
    "node.retry_scheduled",
    "node.lost",
    "node.cancelled",
}
_RUN_ENDS = frozenset({"run.completed", "run.failed", "run.cancelled"})


class HistoryStep(BaseModel):
    """One row of the history table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int
    at: float
    event: str
    node_id: str | None = None
    visit: int | None = None
    attempt: int | None = None
    keys_changed: list[str] = []
    duration_s: float | None = None
    detail: str | None = None  # the error, reason or routing of the event, in a few words


def output_visits(events: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """The (node, visit) pairs whose outputs ``history_steps`` compares, in history order."""
    seen: dict[tuple[str, int], None] = {}
    for e in events:
        node, visit = e.get("node_id"), e.get("visit")
        if e.get("type") in OUTPUT_EVENTS and isinstance(node, str) and isinstance(visit, int):
            seen[(node, visit)] = None
    return list(seen)


def history_steps(
    events: Sequence[Mapping[str, Any]],
    outputs: Mapping[tuple[str, int], Any],
    run_input: Any = None,
) -> list[HistoryStep]:
    """The table of ``events`` (a run's history, oldest first); ``outputs`` maps (node, visit)
    to that visit's stored output (missing ones count as unknown: no keys changed)."""
    enqueued: dict[tuple[str, int, int], float] = {}
    last_output: dict[str, Any] = {}
    submitted_at: float | None = None
    steps: list[HistoryStep] = []
    for i, e in enumerate(events, start=1):
        kind = str(e.get("type", "?"))
        at = float(e.get("at") or 0.0)
        node = e.get("node_id") if isinstance(e.get("node_id"), str) else None
        visit = e.get("visit") if isinstance(e.get("visit"), int) else None
        attempt = e.get("attempt") if isinstance(e.get("attempt"), int) else None
        raw_data = e.get("data")
        data: Mapping[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        keys: list[str] = []
        duration: float | None = None
        if kind == "run.submitted":
            submitted_at = at
            keys = [f"input.{k}" for k in run_input] if isinstance(run_input, dict) else []
        elif kind in _RUN_ENDS and submitted_at is not None:
            duration = max(0.0, at - submitted_at)
        if node is not None and visit is not None:
            if kind == "node.enqueued":
                enqueued[(node, visit, attempt or 1)] = at
            elif kind in _ATTEMPT_ENDS:
                start = enqueued.get((node, visit, attempt or 1))
                duration = max(0.0, at - start) if start is not None else None
            if kind in OUTPUT_EVENTS and (node, visit) in outputs:
                new = outputs[(node, visit)]
                keys = _changed(node, last_output.get(node, _NOTHING), new)
                last_output[node] = new
        steps.append(
            HistoryStep(
                step=i,
                at=at,
                event=kind,
                node_id=node,
                visit=visit,
                attempt=attempt,
                keys_changed=keys,
                duration_s=duration,
                detail=_detail(data),
            )
        )
    return steps


_NOTHING = object()


def _changed(node: str, old: Any, new: Any) -> list[str]:
    if isinstance(new, dict):
        before = old if isinstance(old, dict) else {}
        return [f"{node}.output.{k}" for k, v in new.items() if k not in before or before[k] != v]
    if (old is _NOTHING and new is not None) or (old is not _NOTHING and old != new):
        return [f"{node}.output"]
    return []  # the same as before, or no output at all (start, end, ...)


def _detail(data: Mapping[str, Any]) -> str | None:
    error = data.get("error")
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('message', '')}".strip()
    for field in ("reason", "decision"):
        value = data.get(field)
        if isinstance(value, str) and value:
            return value
    nxt = data.get("next")
    if isinstance(nxt, list) and nxt:
        return "-> " + ", ".join(str(n) for n in nxt)
    return None
