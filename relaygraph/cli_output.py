"""How the CLI prints things for people: run status, run lists, live progress lines."""

from __future__ import annotations

import datetime as dt
from typing import Any, TextIO

import orjson

from dispatcher.views import RunSummary, RunView
from graph_core.errors import GraphValidationError
from graph_core.history import HistoryStep
from graph_core.status import NodeStatus

__all__ = [
    "Progress",
    "Symbols",
    "compact",
    "format_history",
    "format_problems",
    "format_runs",
    "format_status",
    "pretty",
]


class Symbols:
    """Status marks; ASCII fallbacks when the output encoding lacks the Unicode ones."""

    def __init__(self, stream: TextIO) -> None:
        fancy = "✓✗⏸↻·⊘"
        try:
            fancy.encode(getattr(stream, "encoding", None) or "ascii")
            ok = True
        except (UnicodeEncodeError, LookupError):
            ok = False
        self.done, self.failed, self.waiting, self.retry, self.skipped, self.cancelled = (
            tuple(fancy) if ok else ("+", "x", "||", "~", "-", "/")
        )


def pretty(value: Any) -> str:
    """Indented JSON for a person to read."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def compact(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return ""
    return f"{max(0.0, end - start):.2f}s"


def format_problems(e: GraphValidationError) -> list[str]:
    return [f"  {p}" for p in e.problems]


def format_status(view: RunView) -> str:
    """A multi-line, human-readable run status."""
    took = _duration(view.created_at, view.finished_at)
    lines = [
        f"run {view.run_id}: {view.status.value}" + (f" in {took}" if took else ""),
        f"  graph     {view.graph_id} v{view.graph_version}",
        f"  created   {_when(view.created_at)}",
    ]
    if view.finished_at is not None:
        lines.append(f"  finished  {_when(view.finished_at)}")
    lines.append(f"  input     {compact(view.input)}")
    if view.output is not None:
        lines.append(f"  output    {compact(view.output)}")
    if view.error is not None:
        lines.append(f"  error     {view.error}")
    if view.nodes:
        lines.append("  nodes:")
        width = max(len(n) for n in view.nodes)
        for node_id, node in view.nodes.items():
            extra = ""
            if node.visits:
                extra = f"  visits {node.visits}  attempts {node.attempts}"
                took = _duration(node.started_at, node.finished_at)
                extra += f"  {took}" if took else ""
            if node.status == NodeStatus.FAILED and node.error is not None:
                extra += f"  ({node.error.message})"
            lines.append(f"    {node_id:<{width}}  {node.status.value:<15}{extra}".rstrip())
    for wait in view.waiting:
        lines.append(f"  waiting: {wait.node_id} (visit {wait.visit}) since {_when(wait.since)}")
        if wait.prompt is not None:
            lines.append(f"    prompt: {compact(wait.prompt, 200)}")
        lines.append(
            f"    answer: relaygraph approve {view.run_id} {wait.node_id} [--reject] [--data JSON]"
        )
    lines.append(f"  history   {view.history_length} events")
    return "\n".join(lines)


def format_history(steps: list[HistoryStep], *, events: str = "nodes") -> str:
    """The history table: step, node, visit, event, keys changed, duration (and detail).

    ``events="nodes"`` leaves out the bookkeeping rows (``node.enqueued``), ``"all"`` keeps
    every event; step numbers are the history's own either way.
    """
    shown = [s for s in steps if events == "all" or s.event != "node.enqueued"]
    rows = [("STEP", "NODE", "VISIT", "EVENT", "KEYS CHANGED", "DURATION", "DETAIL")]
    for s in shown:
        rows.append(
            (
                str(s.step),
                s.node_id or "-",
                str(s.visit) if s.visit is not None else "-",
                s.event,
                ", ".join(s.keys_changed) or "-",
                f"{s.duration_s:.3f}s" if s.duration_s is not None else "-",
                compact(s.detail, 80) if s.detail else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return "\n".join(
        (
            "  ".join(c.ljust(w) for c, w in zip(row[:6], widths, strict=True)) + "  " + row[6]
        ).rstrip()
        for row in rows
    )


def format_runs(runs: list[RunSummary]) -> str:
    if not runs:
        return "no runs"
    rows = [("RUN", "GRAPH", "STATUS", "CREATED", "ERROR")]
    for r in runs:
        error = compact(r.error.message, 60) if r.error is not None else ""
        graph = f"{r.graph_id}@{r.graph_version}"
        rows.append((r.run_id, graph, r.status.value, _when(r.created_at), error))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ).rstrip()


def _plain_line(
    s: Symbols, kind: str, node: str, visit: int, at: float, data: dict[str, Any]
) -> str | None:
    """The line of a node event that needs no bookkeeping (None: no line)."""
    err = data.get("error") or {}
    if kind == "node.skipped":
        return f"{s.skipped} {node} skipped"
    if kind == "node.cancelled":
        return f"{s.cancelled} {node} cancelled"
    if kind == "node.escalated":
        return f"{s.retry} {node} timed out waiting; escalated to {data.get('to')}"
    if kind == "node.delayed":
        due = float(data.get("due_at") or at)
        return f"{s.waiting} {node} delayed {max(due - at, 0.0):.3g}s"
    if kind == "node.compensating":
        return f"{s.retry} {node} compensating (undoing visit {visit})"
    if kind == "node.compensated":
        return f"{s.done} {node} compensated"
    if kind == "map.started":
        limit = data.get("max_concurrency")
        return f"{s.waiting} {node} mapping {data.get('items')} item(s), {limit} at a time"
    if kind == "map.finished":
        failed = data.get("failed") or 0
        return f"{s.done} {node} mapped: {data.get('done')} done" + (
            f", {failed} failed (tolerated)" if failed else ""
        )
    if kind == "map.item_failed":
        return f"{s.failed} {node} item {data.get('item')} failed: {err.get('message', '')}"
    if kind == "subgraph.started" and data.get("item") is None:
        child, graph = data.get("child_run_id"), data.get("graph_id")
        return f"{s.waiting} {node} started child run {child} ({graph})"
    if kind == "node.compensation_failed":
        return f"{s.failed} {node} compensation failed: {err.get('message', '')}"
    return None


class Progress:
    """Turns a run's live events into one line per node event."""

    def __init__(self, out: TextIO, hidden_nodes: frozenset[str], enabled: bool = True) -> None:
        self.out = out
        self.sym = Symbols(out)
        self.enabled = enabled
        self.hidden = hidden_nodes  # nodes whose completion is not worth a line (start, end)
        self._started: dict[tuple[str, int], float] = {}
        self._decided: set[tuple[str, int]] = set()

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.out, flush=True)

    def event(self, ev: dict[str, Any]) -> None:
        kind = str(ev.get("type", ""))
        node = ev.get("node_id")
        visit = ev.get("visit") or 0
        at = float(ev.get("at") or 0.0)
        data: dict[str, Any] = ev.get("data") or {}
        s = self.sym
        if node is None:
            if kind == "run.compensating":
                err = data.get("error") or {}
                self.line(f"  {s.retry} run {data.get('cause')}: {err.get('message', '')}; "
                          "undoing its completed nodes")  # fmt: skip
            elif kind == "event.ignored" and data.get("kind") == "approval":
                self.line(f"  ! approval for {data.get('node_id')} ignored: {data.get('reason')}")
            return
        key = (str(node), int(visit))
        if kind in ("node.enqueued", "node.waiting"):
            self._started.setdefault(key, at)
        took = _duration(self._started.get(key), at)
        if kind == "node.completed":
            if node not in self.hidden and key not in self._decided:
                self.line(f"  {s.done} {node} (visit {visit}) {took}".rstrip())
        elif kind == "node.waiting":
            prompt = data.get("prompt")
            text = f": {compact(prompt, 200)}" if prompt is not None else ""
            self.line(f"  {s.waiting} {node} waiting for approval{text}")
        elif kind in ("node.approved", "node.rejected"):
            self._decided.add(key)  # its node.completed would say the same again
            who = f" by {data['actor']}" if data.get("actor") else ""
            self.line(f"  {s.done} {node} {kind.split('.')[1]}{who} (visit {visit}) {took}")
        elif kind == "node.failed":
            err = data.get("error") or {}
            msg = f"{err.get('type', 'Error')}: {err.get('message', '')}"
            attempt = ev.get("attempt")
            self.line(f"  {s.failed} {node} failed (visit {visit}, attempt {attempt}) {msg}")
        elif kind == "node.retry_scheduled":
            err = data.get("error") or {}
            delay = float(data.get("delay_s") or 0.0)
            self.line(
                f"  {s.retry} {node} attempt {ev.get('attempt')} failed "
                f"({err.get('message', '')}); retrying in {delay:g}s"
            )
        else:
            plain = _plain_line(s, kind, str(node), int(visit), at, data)
            if plain is not None:
                self.line(f"  {plain}")


def format_trigger(row: dict[str, Any]) -> str:
    """One line of ``relaygraph triggers``."""
    head = f"{row['graph_id']} v{row['graph_version']}  {row['trigger_id']} ({row['type']})"
    if row["type"] == "scheduled":
        catch = ", catch-up" if row.get("catch_up") else ""
        last = f"; last fired {_when(row['last_fired'])}" if row.get("last_fired") else ""
        return (
            f"{head}  {row['cron']} {row['timezone']}{catch}: next {_when(row['next_fire'])}{last}"
        )
    if row["type"] == "event":
        filt = f" if {compact(row['filter'], 120)}" if row.get("filter") else ""
        return f"{head}  on event {row['event']!r}{filt}"
    return f"{head}  POST {row['path']} (secret in ${row['secret_env']})"
