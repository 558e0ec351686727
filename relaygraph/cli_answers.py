"""Answers to approval waits during ``relaygraph run``: from ``--approve``/``--reject`` flags,
in command-line order per node, or asked on the terminal."""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from graph_core.errors import RelaygraphError
from graph_core.model import Graph
from relaygraph.cli_common import UsageError, parse_json_object
from relaygraph.cli_output import compact

__all__ = ["AnswerAction", "Answers", "Decision", "NoAnswer", "Verdict", "ask", "parse_answers"]

Verdict = Literal["approve", "reject"]
Decision = tuple[Verdict, dict[str, Any]]
_NOT_ANSWERABLE = frozenset({"start", "end", "parallel", "map", "subgraph", "delay"})


class AnswerAction(argparse.Action):
    """``--approve NODE[=JSON]`` / ``--reject NODE[=JSON]``, kept in command-line order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        answers = list(getattr(namespace, self.dest, None) or [])
        answers.append((self.const, values))
        setattr(namespace, self.dest, answers)


def parse_answers(
    raw: list[tuple[str, str]], graph: Graph, children: Sequence[Graph] = ()
) -> dict[str, list[Decision]]:
    """``--approve``/``--reject`` values per node (of ``graph``, or of the graphs its child
    runs run), in order; UsageError for a bad one."""
    planned: dict[str, list[Decision]] = {}
    graphs = [graph, *children]
    for decision, value in raw:
        node_id, sep, text = value.partition("=")
        flag = f"--{decision} {value}"
        owner = next((g for g in graphs if g.has_node(node_id)), None)
        if owner is None:
            known = ", ".join(
                dict.fromkeys(
                    n.id for g in graphs for n in g.nodes if n.type not in _NOT_ANSWERABLE
                )
            )
            raise UsageError(
                f"{flag}: graph {graph.id!r} has no node {node_id!r} (nodes that can wait: {known})"
            )
        if owner.node(node_id).type in _NOT_ANSWERABLE:
            raise UsageError(f"{flag}: node {node_id!r} is a {owner.node(node_id).type} node")
        data = parse_json_object(text, f"--{decision} {node_id}=") if sep else None
        verdict: Verdict = "reject" if decision == "reject" else "approve"
        planned.setdefault(node_id, []).append((verdict, data or {}))
    return planned


@dataclass
class Answers:
    planned: dict[str, list[Decision]]
    interactive: bool
    answered: set[str] = field(default_factory=set)  # wait tokens already answered

    def next(self, node_id: str) -> Decision | None:
        queue = self.planned.get(node_id)
        if not queue:
            return None
        return queue.pop(0) if len(queue) > 1 else queue[0]


class NoAnswer(RelaygraphError):
    def __init__(self, node_id: str, prompt: Any) -> None:
        self.node_id = node_id
        shown = f" ({compact(prompt, 200)})" if prompt is not None else ""
        super().__init__(
            f"node {node_id!r} is waiting for approval{shown} and stdin is not a terminal to "
            f"ask on; pass --approve {node_id}='{{...}}' or --reject {node_id}"
        )


async def ask(node_id: str, prompt: Any) -> Decision:
    """Ask on the terminal. Reads in a daemon thread, so Ctrl-C never waits for a line."""
    while True:
        choice = (await _read_line(f"  {node_id}: approve or reject? [a/r] ")).strip().lower()
        if choice in ("a", "approve", "r", "reject"):
            break
    decision: Verdict = "approve" if choice.startswith("a") else "reject"
    while True:
        text = (await _read_line("  data (JSON object, empty for none): ")).strip()
        if not text:
            return decision, {}
        try:
            data = parse_json_object(text, "data")
        except UsageError as e:
            print(f"  {e}", flush=True)
            continue
        return decision, data or {}


async def _read_line(prompt: str) -> str:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            line = input(prompt)
        except EOFError:
            line = ""
        loop.call_soon_threadsafe(_settle, done, line)

    threading.Thread(target=read, name="relaygraph-ask", daemon=True).start()
    return await done


def _settle(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)
