"""The ``relaygraph`` command line.

Exit status: 0 success (a run completed), 1 a run failed or was cancelled, or something went
wrong at run time (Redis unreachable, unknown run), 2 a usage, settings or validation error.
Settings come from flags first, then ``RELAYGRAPH_*`` environment variables.

Commands: ``run`` (``relaygraph.cli_run``); ``up``, ``dispatcher`` and ``worker``
(``relaygraph.cli_serve``); ``api`` and ``api-key`` (``relaygraph.cli_api``); ``validate``,
``export``, ``register``, ``submit``, ``status``, ``runs``, ``approve`` and ``cancel`` (here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispatcher.client import InputError, WaitTimeout, WorkflowClient, load_graph
from dispatcher.connect import refuse_cluster
from dispatcher.errors import RunNotFound
from dispatcher.store import GraphNotFound
from graph_core.errors import GraphValidationError, RelaygraphError
from graph_core.limits import LimitError, parse_scope
from graph_core.model import Graph
from graph_core.redis_url import ClusterUnsupported, is_cluster_reply
from graph_core.settings import SettingsError
from graph_core.status import RunStatus
from relaygraph import __version__, cli_api, cli_run, cli_serve
from relaygraph.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    exit_code_for,
    parse_json,
    parse_json_object,
    redact_url,
    require_url,
    settings_from,
)
from relaygraph.cli_output import (
    format_history,
    format_problems,
    format_runs,
    format_status,
    format_trigger,
    pretty,
)

__all__ = ["build_parser", "main"]


# --- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `relaygraph runs | head`: not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except GraphValidationError as e:
        return _error(str(e).splitlines()[0], *format_problems(e), code=EXIT_USAGE)
    except (UsageError, SettingsError, InputError, GraphNotFound, LimitError) as e:
        return _error(str(e), code=EXIT_USAGE)
    except (RedisConnectionError, RedisTimeoutError) as e:
        where = redact_url(getattr(args, "_redis_url", None) or "")
        return _error(f"cannot reach Redis{' at ' + where if where else ''}: {e}")
    except ResponseError as e:
        if not is_cluster_reply(e):
            raise
        return _error(str(ClusterUnsupported(redact_url(getattr(args, "_redis_url", None) or ""))))
    except RelaygraphError as e:
        return _error(str(e))


def _error(message: str, *more: str, code: int = EXIT_FAILED) -> int:
    print(f"relaygraph: error: {message}", file=sys.stderr)
    for line in more:
        print(line, file=sys.stderr)
    return code


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relaygraph",
        description="Run workflow graphs on Redis: dispatcher, workers, runs and approvals.",
    )
    parser.add_argument("--version", action="version", version=f"relaygraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    redis_opts = argparse.ArgumentParser(add_help=False)
    redis_opts.add_argument("--redis", metavar="URL", help="Redis URL (RELAYGRAPH_REDIS_URL)")
    redis_opts.add_argument("--prefix", help="key prefix (RELAYGRAPH_PREFIX; default relaygraph)")
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", help="print JSON for scripts")

    cli_run.add_run_parser(sub, [redis_opts, json_opt])
    cli_serve.add_process_commands(sub, redis_opts)
    cli_api.add_api_commands(sub, redis_opts)
    _add_file_commands(sub, redis_opts, json_opt)
    _add_client_commands(sub, redis_opts, json_opt)
    _add_trigger_commands(sub, redis_opts, json_opt)
    return parser


def _add_file_commands(
    sub: Any, redis_opts: argparse.ArgumentParser, json_opt: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "validate",
        parents=[json_opt],
        help="check graph files: one line per problem, exit 2 if any",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "export",
        parents=[redis_opts],
        help="draw a graph as Mermaid or Graphviz DOT, coloured by a run's node statuses",
    )
    p.add_argument(
        "graph", metavar="GRAPH", help="a graph file, or a registered graph's id (needs Redis)"
    )
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    p.add_argument(
        "--run",
        metavar="RUN_ID",
        help="colour each node by its status in this run, with a legend (needs Redis)",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    p.set_defaults(func=cmd_export)


def _add_client_commands(
    sub: Any, redis_opts: argparse.ArgumentParser, json_opt: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("register", parents=[redis_opts, json_opt], help="store a graph")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("submit", parents=[redis_opts, json_opt], help="start a run")
    p.add_argument("graph", metavar="GRAPH_ID|FILE", help="a registered graph id, or a file")
    p.add_argument("--input", metavar="JSON", help="the run's input (JSON)")
    p.add_argument("--version", type=int, help="graph version (default: the latest)")
    p.add_argument("--idempotency-key", metavar="K", help="the same key returns the same run")
    p.add_argument(
        "--priority", type=int, default=0, metavar="N", help="0-100: higher runs' jobs go first"
    )
    p.add_argument("--wait", action="store_true", help="wait for the run to finish")
    p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S s")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", parents=[redis_opts, json_opt], help="show a run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("runs", parents=[redis_opts, json_opt], help="list runs, newest first")
    p.add_argument("--status", choices=[s.value for s in RunStatus])
    p.add_argument("--graph", metavar="GRAPH_ID", help="only the runs of this graph")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (default 20)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("history", parents=[redis_opts, json_opt], help="a run's steps as a table")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--all", action="store_true", help="also show bookkeeping events (node.enqueued)"
    )
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("approve", parents=[redis_opts], help="approve or reject a waiting node")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("node_id", metavar="NODE_ID")
    p.add_argument("--reject", action="store_true", help="reject instead of approve")
    p.add_argument("--data", metavar="JSON", help="a JSON object passed to the node's output")
    p.add_argument("--actor", metavar="NAME", help="who decided (default: $USER)")
    p.add_argument("--token", metavar="T", help="the wait token (default: the node's current)")
    p.add_argument(
        "--publish",
        action="store_true",
        help="publish on the approvals channel instead of the durable inbox",
    )
    p.set_defaults(func=cmd_approve)
    _add_operation_commands(sub, redis_opts)


def _add_operation_commands(sub: Any, redis_opts: argparse.ArgumentParser) -> None:
    """pause, resume, retry, rerun and cancel."""
    p = sub.add_parser("pause", parents=[redis_opts], help="pause a run (nothing new starts)")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--reason", default="paused", metavar="R")
    p.set_defaults(func=cmd_pause)

    p = sub.add_parser("resume", parents=[redis_opts], help="resume a paused run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("retry", parents=[redis_opts], help="retry a failed run from its failure")
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("rerun", parents=[redis_opts], help="run a finished run again from a node")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--from",
        dest="from_node",
        required=True,
        metavar="NODE",
        help="this node and everything downstream run again; upstream is kept",
    )
    p.add_argument("--input", metavar="JSON", help="replace the run's input first")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser("cancel", parents=[redis_opts], help="cancel a run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--reason", default="cancelled", metavar="R")
    p.set_defaults(func=cmd_cancel)


def _add_trigger_commands(
    sub: Any, redis_opts: argparse.ArgumentParser, json_opt: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "emit", parents=[redis_opts, json_opt], help="send an event: start the runs it triggers"
    )
    p.add_argument("event", metavar="EVENT")
    p.add_argument("--data", metavar="JSON", help="the event's data: the runs' input")
    p.add_argument("--idempotency-key", metavar="K", help="emitting again with K starts nothing")
    p.set_defaults(func=cmd_emit)

    p = sub.add_parser(
        "triggers", parents=[redis_opts, json_opt], help="list triggers, with next fire times"
    )
    p.set_defaults(func=cmd_triggers)

    p = sub.add_parser("limits", help="fleet-wide limits per queue or node type")
    limits = p.add_subparsers(dest="limits_command", required=True, metavar="set|show|clear")
    q = limits.add_parser("set", parents=[redis_opts], help="set a scope's limits")
    q.add_argument("scope", metavar="QUEUE|queue:NAME|type:NAME")
    q.add_argument("--max-running", type=int, metavar="N", help="jobs at once, fleet-wide")
    q.add_argument("--rate", metavar="N/s|N/min|N/hour", help="job starts, a token bucket")
    q.add_argument("--burst", type=float, metavar="N", help="the bucket's size (default 1)")
    q.set_defaults(func=cmd_limits_set)
    q = limits.add_parser("show", parents=[redis_opts, json_opt], help="list the limits")
    q.set_defaults(func=cmd_limits_show)
    q = limits.add_parser("clear", parents=[redis_opts], help="remove a scope's limits")
    q.add_argument("scope", metavar="QUEUE|queue:NAME|type:NAME")
    q.set_defaults(func=cmd_limits_clear)


# --- shared helpers ---------------------------------------------------------------------


def _with_client(args: argparse.Namespace, fn: Callable[[WorkflowClient], Awaitable[int]]) -> int:
    settings = settings_from(args)
    require_url(settings, args.command)

    async def go() -> int:
        async with WorkflowClient.from_settings(settings) as client:
            await refuse_cluster(client.redis)  # before a first write lands on one node
            await client.check_layout()  # the deployment's layout (read-only)
            return await fn(client)

    return asyncio.run(go())


def _print_json(value: Any) -> None:
    print(pretty(value))


# --- commands without Redis -------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    results = []
    for name in args.files:
        try:
            graph = load_graph(name)
        except GraphValidationError as e:
            results.append({"file": name, "ok": False, "problems": e.problems, "error": e})
            continue
        results.append({"file": name, "ok": True, "graph": graph})
    if args.json:
        _print_json(
            [
                {
                    "file": r["file"],
                    "ok": r["ok"],
                    "problems": [p.to_dict() for p in r.get("problems", [])],
                }
                for r in results
            ]
        )
    else:
        for r in results:
            if r["ok"]:
                g = r["graph"]
                print(f"{r['file']}: OK ({g.id} v{g.version}, {len(g.nodes)} nodes)")
            else:  # one line per problem, each naming the file: easy to grep and to jump to
                for p in r["problems"]:
                    print(f"{r['file']}: {p.path}: {p.message} [{p.code}]")
        bad = sum(len(r["problems"]) for r in results if not r["ok"])
        if bad:
            files = sum(1 for r in results if not r["ok"])
            print(f"{bad} problem(s) in {files} file(s)", file=sys.stderr)
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_USAGE


def cmd_export(args: argparse.Namespace) -> int:
    from graph_core.export import to_dot, to_mermaid

    local = _looks_like_file(args.graph)
    graph = load_graph(args.graph) if local else None
    statuses: dict[str, str] | None = None
    if args.run is not None or graph is None:

        async def go(client: WorkflowClient) -> int:
            nonlocal graph, statuses
            version = None
            if args.run is not None:
                view = await client.get_run(args.run)
                if view is None:
                    raise RunNotFound(args.run)
                want = graph.id if graph is not None else args.graph
                if view.graph_id != want:
                    raise UsageError(
                        f"run {args.run!r} is a run of graph {view.graph_id!r}, not {want!r}"
                    )
                version = view.graph_version
                statuses = {nid: n.status.value for nid, n in view.nodes.items()}
            if graph is None:  # a registered graph: the run's pinned version, or the latest
                graph = await client.get_graph(args.graph, version)
            return EXIT_OK

        _with_client(args, go)
    if not isinstance(graph, Graph):  # pragma: no cover - go() either set it or raised
        raise UsageError(f"graph {args.graph!r} could not be loaded")
    if statuses is not None:  # nodes the run never reached are pending
        statuses = {n.id: "pending" for n in graph.nodes} | statuses
    render = to_mermaid if args.format == "mermaid" else to_dot
    text = render(graph, statuses, legend=statuses is not None)
    if args.output:
        Path(args.output).write_text(text if text.endswith("\n") else text + "\n")
    else:
        print(text.rstrip("\n"))
    return EXIT_OK


# --- client commands --------------------------------------------------------------------


def cmd_register(args: argparse.Namespace) -> int:
    graph = load_graph(args.file)  # validate before connecting

    async def go(client: WorkflowClient) -> int:
        version = await client.register_graph(graph)
        if args.json:
            _print_json({"graph_id": graph.id, "version": version})
        else:
            print(f"registered graph {graph.id!r} version {version}")
        return EXIT_OK

    return _with_client(args, go)


def cmd_submit(args: argparse.Namespace) -> int:
    payload = parse_json(args.input, "--input")
    graph = load_graph(args.graph) if _looks_like_file(args.graph) else None
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout only applies with --wait")

    async def go(client: WorkflowClient) -> int:
        graph_id, version = args.graph, args.version
        if graph is not None:
            registered = await client.register_graph(graph)
            graph_id, version = graph.id, version or registered
        run_id = await client.submit(
            graph_id,
            payload,
            idempotency_key=args.idempotency_key,
            version=version,
            priority=args.priority,
        )
        if not args.wait:
            _print_json({"run_id": run_id}) if args.json else print(run_id)
            return EXIT_OK
        try:
            view = await client.wait(run_id, args.timeout)
        except WaitTimeout as e:
            if args.json:
                _print_json({"run_id": run_id, "status": e.status, "timed_out": True})
            return _error(str(e))
        print(pretty(view.to_json_dict()) if args.json else format_status(view))
        return exit_code_for(view.status)

    return _with_client(args, go)


def _looks_like_file(arg: str) -> bool:
    return arg.endswith(".json") or os.sep in arg or Path(arg).is_file()


def cmd_status(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        view = await client.get_run(args.run_id)
        if view is None:
            return _error(f"run {args.run_id!r} not found (never submitted, or expired)")
        print(pretty(view.to_json_dict()) if args.json else format_status(view))
        return EXIT_OK

    return _with_client(args, go)


def cmd_runs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")

    async def go(client: WorkflowClient) -> int:
        runs = await client.list_runs(args.status, args.limit, args.graph)
        if args.json:
            _print_json([r.model_dump(mode="json") for r in runs])
        else:
            print(format_runs(runs))
        return EXIT_OK

    return _with_client(args, go)


def cmd_history(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        steps = await client.history_steps(args.run_id)
        if args.json:
            _print_json([s.model_dump(mode="json") for s in steps])
        else:
            print(format_history(steps, events="all" if args.all else "nodes"))
        return EXIT_OK

    return _with_client(args, go)


def cmd_approve(args: argparse.Namespace) -> int:
    data = parse_json_object(args.data, "--data")
    actor = args.actor or os.environ.get("USER") or None
    decision: Literal["approve", "reject"] = "reject" if args.reject else "approve"

    async def go(client: WorkflowClient) -> int:
        await client.decide(
            args.run_id,
            args.node_id,
            decision,
            data,
            actor=actor,
            token=args.token,
            durable=not args.publish,
        )
        how = "published" if args.publish else "sent"
        print(f"{decision} of {args.node_id!r} in run {args.run_id} {how}; see `relaygraph status`")
        return EXIT_OK

    return _with_client(args, go)


def cmd_emit(args: argparse.Namespace) -> int:
    data = parse_json(args.data, "--data")

    async def go(client: WorkflowClient) -> int:
        started = await client.emit(args.event, data, idempotency_key=args.idempotency_key)
        if args.json:
            _print_json([{"graph_id": g, "run_id": r} for g, r in started])
        elif not started:
            print(f"event {args.event!r}: no trigger matched; no run started")
        else:
            for graph_id, run_id in started:
                print(f"{run_id}  {graph_id}")
        return EXIT_OK

    return _with_client(args, go)


def cmd_triggers(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        rows = await client.triggers()
        if args.json:
            _print_json(rows)
            return EXIT_OK
        if not rows:
            print("no graph has a trigger that fires (scheduled, event or webhook)")
        for row in rows:
            print(format_trigger(row))
        return EXIT_OK

    return _with_client(args, go)


def cmd_limits_set(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        limit = await client.set_limit(
            args.scope, max_running=args.max_running, rate=args.rate, burst=args.burst
        )
        print(f"{parse_scope(args.scope)}: {limit.describe()}")
        return EXIT_OK

    return _with_client(args, go)


def cmd_limits_show(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        found = await client.limits()
        if args.json:
            _print_json(found)
        elif not found:
            print("no limits")
        for scope, row in found.items() if not args.json else ():
            print(f"{scope}: {row['text']}; running {row['running']}, held back {row['throttled']}")
        return EXIT_OK

    return _with_client(args, go)


def cmd_limits_clear(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        had = await client.clear_limit(args.scope)
        print(f"{parse_scope(args.scope)}: " + ("limits removed" if had else "had no limits"))
        return EXIT_OK

    return _with_client(args, go)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        await client.cancel(args.run_id, args.reason, actor=os.environ.get("USER") or None)
        print(f"cancel of run {args.run_id} sent; see `relaygraph status`")
        return EXIT_OK

    return _with_client(args, go)


def cmd_pause(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        await client.pause(args.run_id, args.reason, actor=os.environ.get("USER") or None)
        print(f"pause of run {args.run_id} sent; see `relaygraph status`")
        return EXIT_OK

    return _with_client(args, go)


def cmd_resume(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        await client.resume(args.run_id, actor=os.environ.get("USER") or None)
        print(f"resume of run {args.run_id} sent; see `relaygraph status`")
        return EXIT_OK

    return _with_client(args, go)


def cmd_retry(args: argparse.Namespace) -> int:
    async def go(client: WorkflowClient) -> int:
        await client.retry(args.run_id, actor=os.environ.get("USER") or None)
        print(f"retry of run {args.run_id} sent; see `relaygraph status`")
        return EXIT_OK

    return _with_client(args, go)


def cmd_rerun(args: argparse.Namespace) -> int:
    extra = {"input": parse_json(args.input, "--input")} if args.input is not None else {}

    async def go(client: WorkflowClient) -> int:
        actor = os.environ.get("USER") or None
        await client.rerun(args.run_id, args.from_node, actor=actor, **extra)
        print(f"rerun of run {args.run_id} from {args.from_node!r} sent; see `relaygraph status`")
        return EXIT_OK

    return _with_client(args, go)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
