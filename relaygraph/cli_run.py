"""``relaygraph run``: a dispatcher in this process plus worker processes, for one run.

``run`` is the one-command experience: validate the graph, start a throwaway server unless a
Redis URL is configured, start a dispatcher and workers, check every node type has a handler,
submit, print progress live, answer approvals, print the result, and clean everything up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.client import WorkflowClient, load_graph
from dispatcher.connect import check_layout
from dispatcher.settings import DispatcherSettings
from dispatcher.subscription import EventStream
from dispatcher.views import RunView
from graph_core import clock
from graph_core.errors import RelaygraphError
from graph_core.model import Graph
from relaygraph.cli_answers import AnswerAction, Answers, NoAnswer, ask, parse_answers
from relaygraph.cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    UsageError,
    exit_code_for,
    parse_json,
    redact_url,
    settings_from,
)
from relaygraph.cli_output import Progress, compact, pretty
from relaygraph.cli_serve import (
    WORKER_START_TIMEOUT_S,
    dispatcher_task,
    redis_connection,
    worker_pool,
)
from relaygraph.embedded import EmbeddedServer
from relaygraph.procs import WorkerInfo, WorkerPool, WorkerStartError

__all__ = ["add_run_parser", "cmd_run"]

CANCEL_GRACE_S = 5.0
STOP_GRACE_S = 1.0  # the run is over (or interrupted): workers need not finish other jobs
CLEANUP_DEADLINE_S = 20.0  # after Ctrl-C, give up on a stuck clean-up and exit
ACTOR = "cli"  # who answered, for --approve/--reject answers


# --- parsers ----------------------------------------------------------------------------


def add_run_parser(sub: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        parents=list(parents),
        help="run a graph once: server, dispatcher and workers in one command",
        description="Run GRAPH once and print its progress and result. Without --redis (or "
        "RELAYGRAPH_REDIS_URL) a throwaway server is started. Repeat --approve/--reject for "
        "a node to answer its successive visits in order; the last answer repeats.",
    )
    p.add_argument("graph", metavar="GRAPH.json")
    p.add_argument(
        "--graph",
        dest="graphs",
        action="append",
        default=[],
        metavar="CHILD.json",
        help="also register this graph, run by subgraph nodes or maps (repeatable)",
    )
    p.add_argument(
        "--handlers",
        required=True,
        metavar="MODULE[:ATTR]",
        help="module holding a HandlerRegistry (attribute `registry` unless :ATTR)",
    )
    p.add_argument("--input", metavar="JSON", help="the run's input (JSON)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="worker processes (2)")
    p.add_argument("--concurrency", type=int, metavar="N", help="jobs at once per worker queue")
    p.add_argument(
        "--approve",
        dest="answers",
        action=AnswerAction,
        const="approve",
        metavar="NODE[=JSON]",
        help="approve NODE when it waits, with JSON object data (repeatable)",
    )
    p.add_argument(
        "--reject",
        dest="answers",
        action=AnswerAction,
        const="reject",
        metavar="NODE[=JSON]",
        help="reject NODE when it waits (repeatable)",
    )
    p.add_argument("--timeout", type=float, metavar="S", help="cancel the run after S seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="show worker output")
    p.set_defaults(func=cmd_run, answers=[])


# --- run --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    stop = _StopSignal()
    try:
        return _cmd_run(args, stop)
    except _Exit as e:
        print(f"relaygraph: error: {e}", file=sys.stderr)
        return e.code
    except (asyncio.CancelledError, KeyboardInterrupt):  # Ctrl-C or SIGTERM
        signum = stop.signum or signal.SIGINT
        print(
            "relaygraph: " + ("interrupted" if signum == signal.SIGINT else "stopped"),
            file=sys.stderr,
        )
        return 128 + signum


class _StopSignal:
    """Ctrl-C and SIGTERM for ``run``: the first one arms the exit watchdog at once and
    cancels the run's task. The watchdog is armed in the signal handler itself, not where
    the cancellation lands, because a clean-up step on the way there (closing the event
    subscription, say) can hang, and a cancellation can be swallowed by a library; the
    follow loop also checks ``signum`` each second for the latter (seen under CI load)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self, task: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._received, signum, task)

    def _received(self, signum: int, task: asyncio.Task[Any]) -> None:
        if self.signum is None:
            self.signum = signum
            _arm_exit_watchdog(code=128 + signum)
        task.cancel()

    def check(self) -> None:
        """Raise CancelledError if a stop signal came but its cancellation was lost."""
        if self.signum is not None:
            raise asyncio.CancelledError


def _cmd_run(args: argparse.Namespace, stop: _StopSignal) -> int:
    graph = load_graph(args.graph)  # invalid graph: exit 2 with every problem
    children = [load_graph(path) for path in args.graphs]
    payload = parse_json(args.input, "--input")
    answers = Answers(parse_answers(args.answers, graph, children), interactive=sys.stdin.isatty())
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    settings = settings_from(args, DispatcherSettings)
    return asyncio.run(_run(args, settings, graph, children, payload, answers, stop))


async def _run(
    args: argparse.Namespace,
    settings: DispatcherSettings,
    graph: Graph,
    children: list[Graph],
    payload: Any,
    answers: Answers,
    stop: _StopSignal,
) -> int:
    say = Progress(sys.stdout, _quiet_nodes(graph), enabled=not args.json)
    task = asyncio.current_task()
    if task is not None:
        stop.install(task)
    async with contextlib.AsyncExitStack() as stack:
        where = "Redis at " + redact_url(settings.redis_url or "")
        if settings.redis_url is None:
            server = await stack.enter_async_context(EmbeddedServer())
            settings = settings.model_copy(update={"redis_url": server.url})
            where = f"embedded server {server.url}"
        redis = await stack.enter_async_context(redis_connection(settings.redis_url or ""))
        dispatcher = await stack.enter_async_context(dispatcher_task(redis, settings))
        queues = _queues([graph, *children])
        pool = await stack.enter_async_context(
            worker_pool(args, settings, queues, capture=not args.verbose, grace_s=STOP_GRACE_S)
        )
        say.line(
            f"relaygraph: {graph.id} v{graph.version} on {where}, "
            f"{args.workers} worker(s) on queue(s) {', '.join(queues)}"
        )
        try:
            workers = await pool.wait_registered(redis, settings.keys, WORKER_START_TIMEOUT_S)
        except WorkerStartError as e:
            code = EXIT_USAGE if e.returncode == EXIT_USAGE else EXIT_FAILED
            raise _Exit(code, f"a worker failed to start: {e}") from e
        for g in (graph, *children):
            _check_handlers(g, workers, args.handlers)

        client = WorkflowClient(
            redis,
            prefix=settings.prefix,
            max_message_bytes=settings.max_message_bytes,
            retention_s=settings.retention_s,
            shards=settings.shards,
        )
        await check_layout(redis, client.keys)
        await _register(client, [*children, graph])
        run_id = clock.new_run_id()
        # before submitting: miss nothing (child runs' events too, to answer their waits)
        async with client.subscribe(run_id, children=bool(children)) as stream:
            await client.submit(graph.id, payload, version=graph.version, run_id=run_id)
            say.line(f"run {run_id} started")
            health = _Health(pool, dispatcher, stop)
            view = await _follow(client, run_id, stream, say, answers, health, args.timeout)
        _report(args, say, view)  # before the clean-up, which takes a moment
    return exit_code_for(view.status)


def _arm_exit_watchdog(code: int, after_s: float = CLEANUP_DEADLINE_S) -> None:
    """Exit with ``code`` if stopping takes longer than ``after_s``: a stuck clean-up step
    must never keep a Ctrl-C'd command alive. Children die with us (parent-death signal)."""

    def give_up() -> None:
        print(f"relaygraph: clean-up took over {after_s:g}s; exiting", file=sys.stderr)
        os._exit(code)

    timer = threading.Timer(after_s, give_up)
    timer.daemon = True
    timer.start()


class _Exit(RelaygraphError):
    """Stop ``run`` with this exit status and message (raised inside the cleanup stack)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def _quiet_nodes(graph: Graph) -> frozenset[str]:
    return frozenset(n.id for n in graph.nodes if n.type in ("start", "end"))


async def _register(client: WorkflowClient, graphs: list[Graph]) -> None:
    """Register the graphs, each after the graphs it runs as children (in the order given
    where they do not depend on each other)."""
    left = list(graphs)
    done: set[str] = set()
    while left:
        ids = {g.id for g in left}
        ready = [g for g in left if not any(r in ids - {g.id} for _, r, _ in g.subgraph_refs())]
        for g in ready or left[:1]:  # a cycle: registering says what is wrong
            await client.register_graph(g)
            done.add(g.id)
        left = [g for g in left if g.id not in done]


def _queues(graphs: list[Graph]) -> list[str]:
    used = {n.queue or "default" for g in graphs for n in g.nodes if n.job_type is not None}
    return sorted(used) or ["default"]


def _check_handlers(graph: Graph, workers: list[WorkerInfo], handlers: str) -> None:
    served = {t for w in workers for t in w.types}
    missing: dict[str, list[str]] = {}
    for node in graph.nodes:
        kind = node.job_type
        if kind is not None and kind not in served:
            missing.setdefault(kind, []).append(node.id)
    if missing:
        what = "; ".join(f"{t!r} (node {', '.join(ids)})" for t, ids in sorted(missing.items()))
        raise _Exit(
            EXIT_USAGE,
            f"no handler for node type(s) {what} in {handlers}; its registry handles: "
            f"{', '.join(sorted(served)) or 'nothing'}",
        )


@dataclass
class _Health:
    """What must stay up while a run is followed: the workers and the dispatcher task (and
    no stop signal has come)."""

    pool: WorkerPool
    dispatcher: asyncio.Task[None]
    stop: _StopSignal

    def check(self) -> None:
        self.stop.check()
        if self.dispatcher.done():
            error = None if self.dispatcher.cancelled() else self.dispatcher.exception()
            raise _Exit(EXIT_FAILED, f"the dispatcher stopped: {error!r}")
        try:
            self.pool.check_alive()
        except WorkerStartError as e:
            raise _Exit(EXIT_FAILED, str(e)) from e


async def _follow(
    client: WorkflowClient,
    run_id: str,
    stream: EventStream,
    say: Progress,
    answers: Answers,
    health: _Health,
    timeout: float | None,
) -> RunView:
    """Print events until the run is finished; answer waits on the way."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        event = await stream.get(timeout=max(remaining, 0.0)) if remaining > 0 else None
        if event is not None:
            in_child = event.get("run_id") != run_id
            if not in_child:
                say.event(event)
            elif event.get("type") in _CHILD_LINES:
                say.event({**event, "node_id": f"{event['node_id']} (child run {event['run_id']})"})
            if event.get("type") == "node.waiting":
                data = {**(event.get("data") or {}), "run_id": event.get("run_id")}
                await _answer(client, run_id, answers, say, event["node_id"], data)
        root_run_event = (
            event is not None
            and event.get("run_id") == run_id
            and str(event.get("type", "")).startswith("run.")
        )
        if event is None or root_run_event:
            # The root run's own run events only (a child's waits come as node.waiting
            # events; re-reading the view, which lists child waits, per child run event
            # would cost what the run's size does). Also the fallback when pub/sub dropped
            # something: re-read the stored run.
            view = await client.get_run(run_id)
            if view is None:
                raise RelaygraphError(f"run {run_id!r} disappeared (was the server flushed?)")
            if view.terminal:
                return view
            for wait in view.waiting:
                wait_data = {"token": wait.token, "prompt": wait.prompt, "run_id": wait.run_id}
                await _answer(client, run_id, answers, say, wait.node_id, wait_data)
        health.check()
        if deadline is not None and time.monotonic() >= deadline:
            await _cancel_and_settle(client, run_id, f"timed out after {timeout:g}s")
            view = await client.get_run(run_id)
            status = view.status.value if view is not None else "unknown"
            raise _Exit(EXIT_FAILED, f"run {run_id} did not finish within {timeout:g}s ({status})")


_CHILD_LINES = frozenset({"node.waiting", "node.approved", "node.rejected", "node.failed"})


async def _answer(
    client: WorkflowClient,
    run_id: str,
    answers: Answers,
    say: Progress,
    node_id: str,
    wait: dict[str, Any],
) -> None:
    token = wait.get("token")
    if not isinstance(token, str) or token in answers.answered:
        return
    answers.answered.add(token)
    decision, actor = answers.next(node_id), ACTOR
    if decision is None and answers.interactive:
        decision, actor = await ask(node_id, wait.get("prompt")), _whoami()
    if decision is None:
        await _cancel_and_settle(client, run_id, f"no answer for {node_id!r}")
        raise _Exit(EXIT_FAILED, str(NoAnswer(node_id, wait.get("prompt"))))
    verdict, data = decision
    say.line(f"  → {verdict} {node_id}" + (f" with {compact(data)}" if data else ""))
    where = wait.get("run_id") or run_id  # a child run's wait is decided in that run
    await client.decide(where, node_id, verdict, data, actor=actor, token=token)


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        return ACTOR


async def _cancel_and_settle(client: WorkflowClient, run_id: str, reason: str) -> None:
    """Cancel the run and give the dispatcher a moment to record it (best effort)."""
    await client.cancel(run_id, reason, actor=ACTOR)
    with contextlib.suppress(TimeoutError):
        await client.wait(run_id, CANCEL_GRACE_S)


def _report(args: argparse.Namespace, say: Progress, view: RunView) -> None:
    if args.json:
        print(pretty(view.to_json_dict()))
        return
    took = f"{(view.finished_at or view.updated_at) - view.created_at:.2f}s"
    quiet = say.hidden
    ran = [n for nid, n in view.nodes.items() if n.visits and nid not in quiet]
    summary = f"{len(ran)} node(s) ran, {sum(n.visits for n in ran)} visit(s)"
    if view.error is not None:
        say.line(f"run {view.run_id} {view.status.value} after {took} ({summary}): {view.error}")
        return
    say.line(f"run {view.run_id} {view.status.value} in {took} ({summary})")
    say.line("result:")
    say.line(pretty(view.output))
