"""Metrics and JSON logs against a real server: a dispatcher and a worker with metrics ports
count what they did (scraped over HTTP and parsed as Prometheus text), the fleet gauges show
a known queue, waiting runs and dead letters, a scrape survives a lost server, and
``--log-format json`` writes one object per line with the ids of the run it is about."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.connect import connect_sync
from dispatcher.fleet import FleetCollector, FleetSnapshot, QueueStats
from dispatcher.metrics import NO_METRICS, DispatcherMetrics
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.events import CancelRequested, HistoryEvent
from graph_core.keys import Keys
from graph_core.logfmt import JsonFormatter
from graph_core.messages import SubmitRequest, encode_inbox
from graph_core.model import Graph, Node, RetryPolicy
from graph_core.settings import SettingsError, load_settings
from graph_core.state import Transition
from relaygraph.cli_serve import worker_argv
from relaygraph.lifeline import parent_death_hook
from relaygraph.procs import WorkerPool
from tests.support.fake_worker import running
from tests.support.layout import SHARDS, keys_for
from tests.support.waiting import wait_for, wait_until_sync
from worker.app import serve
from worker.context import NodeContext
from worker.metrics import WorkerMetrics
from worker.registry import HandlerRegistry
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
RELAYGRAPH = str(Path(sys.executable).parent / "relaygraph")

Samples = dict[str, list[tuple[dict[str, str], float]]]


# --- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports that are free now."""
    for _ in range(200):
        base = random.randint(20_000, 60_000)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("", port))
            except OSError:
                continue
        return base
    raise AssertionError(f"found no {n} consecutive free ports")


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        samples.setdefault(family.name, [])  # a family without samples yet is listed too
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def scrape_sync(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return parse(reply.read().decode())


async def scrape(port: int) -> Samples:
    return await asyncio.to_thread(scrape_sync, port)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels`` (None: no such)."""
    found = [v for ls, v in samples.get(name, []) if labels.items() <= ls.items()]
    if len(found) > 1:
        raise AssertionError(f"{name}{labels} matches {len(found)} samples")
    return found[0] if found else None


async def submit(redis: Any, keys: Keys, graph_id: str, run_id: str) -> None:
    msg = SubmitRequest(graph_id=graph_id, run_id=run_id, input={})
    await redis.xadd(keys.shard_for(run_id).inbox, {"m": encode_inbox(msg)})


async def all_finished(d: Dispatcher, run_ids: list[str]) -> None:
    async def done() -> bool:
        runs = [await d.store.get_run(r) for r in run_ids]
        return all(r is not None and r.finished_at is not None for r in runs)

    await wait_for(done, timeout=20, message=f"{len(run_ids)} runs to finish")


@contextlib.asynccontextmanager
async def serving(settings: WorkerSettings, registry: HandlerRegistry) -> AsyncIterator[None]:
    server = asyncio.create_task(serve(settings, registry, grace_s=0))
    try:
        yield
    finally:
        server.cancel()
        await asyncio.wait_for(asyncio.gather(server, return_exceptions=True), timeout=20)


def flaky_graph() -> Graph:
    """start -> work (fails its first attempt, retried at once) -> end."""
    g = Graph(id="metered")
    g.add_nodes(
        Node("start", type="start"),
        Node("work", type="work", retry=RetryPolicy(max_attempts=2, initial_delay_s=0)),
        Node("end", type="end"),
    )
    g.connect("start", "work")
    g.connect("work", "end")
    return g.validate_graph()


# --- counters -----------------------------------------------------------------------------


async def test_dispatcher_and_worker_count_runs_retries_and_attempts(
    redis: Any, redis_url: str
) -> None:
    n = 6
    d_port, w_port = free_port(), free_port()
    d = Dispatcher(
        redis, DispatcherSettings(shards=SHARDS, redis_url=redis_url, metrics_port=d_port)
    )
    await d.store.register_graph(flaky_graph())
    registry = HandlerRegistry()

    @registry.handler("work")
    async def work(ctx: NodeContext) -> dict[str, int]:
        if ctx.attempt == 1:
            raise ValueError("first attempts fail")
        return {"attempt": ctx.attempt}

    settings = WorkerSettings(
        shards=SHARDS, redis_url=redis_url, metrics_port=w_port, poll_delay=0.01
    )
    runs = [f"m{i}" for i in range(n)]
    async with running(d), serving(settings, registry):
        await wait_for(d.ready.is_set, message="dispatcher ready")
        for run_id in runs:
            await submit(redis, d.keys, "metered", run_id)
        await all_finished(d, runs)
        dispatcher, worker = await scrape(d_port), await scrape(w_port)

    assert value(dispatcher, "relaygraph_runs_started_total", graph="metered") == n
    assert (
        value(dispatcher, "relaygraph_runs_finished_total", graph="metered", status="completed")
        == n
    )
    assert value(dispatcher, "relaygraph_runs_finished_total", status="failed") is None
    assert value(dispatcher, "relaygraph_node_retries_total", node_type="work") == n
    # per run: the submit, the failed report, the completed report; each applied once
    assert value(dispatcher, "relaygraph_transitions_total") == 3 * n

    for outcome in ("failed", "completed"):
        labels = {"node_type": "work", "queue": "default", "outcome": outcome}
        assert value(worker, "relaygraph_node_attempts_total", **labels) == n
        assert value(worker, "relaygraph_node_duration_seconds_count", **labels) == n
        inf = value(worker, "relaygraph_node_duration_seconds_bucket", le="+Inf", **labels)
        assert inf == n
        total = value(worker, "relaygraph_node_duration_seconds_sum", **labels)
        assert total is not None and 0 < total < 10
    # the worker has no fleet gauges, the dispatcher does
    assert "relaygraph_fleet_scrape_ok" not in worker
    assert value(dispatcher, "relaygraph_fleet_scrape_ok") == 1
    assert value(dispatcher, "relaygraph_runs", status="completed") == n
    assert value(dispatcher, "relaygraph_queue_depth", queue="default") == 0


async def test_metrics_stop_being_served_when_the_dispatcher_stops(
    redis: Any, redis_url: str
) -> None:
    port = free_port()
    settings = DispatcherSettings(shards=SHARDS, redis_url=redis_url, metrics_port=port)
    d = Dispatcher(redis, settings)
    async with running(d):
        await wait_for(d.ready.is_set, message="dispatcher ready")
        assert value(await scrape(port), "relaygraph_transitions_total") == 0
    with pytest.raises(urllib.error.URLError):
        await scrape(port)
    again = Dispatcher(redis, settings)  # the port is released: a restart listens on it
    async with running(again):
        await wait_for(again.ready.is_set, message="dispatcher ready again")
        assert value(await scrape(port), "relaygraph_fleet_scrape_ok") == 1


# --- fleet gauges -------------------------------------------------------------------------


def parked_graph() -> Graph:
    """start -> job (on queue ``parked``, which no worker serves) -> end."""
    g = Graph(id="parked")
    g.add_nodes(
        Node("start", type="start"),
        Node("job", type="work", queue="parked"),
        Node("end", type="end"),
    )
    g.connect("start", "job")
    g.connect("job", "end")
    return g.validate_graph()


def approval_graph() -> Graph:
    g = Graph(id="approval")
    g.add_nodes(Node("start", type="start"), Node("review", type="human"), Node("end", type="end"))
    g.connect("start", "review")
    g.connect("review", "end")
    return g.validate_graph()


async def test_fleet_gauges_show_queues_waiting_runs_and_dead_letters(
    redis: Any, redis_url: str
) -> None:
    port = free_port()
    d = Dispatcher(redis, DispatcherSettings(shards=SHARDS, redis_url=redis_url, metrics_port=port))
    keys = d.keys
    await d.store.register_graph(parked_graph())
    await d.store.register_graph(approval_graph())
    # A queue of a registered worker: one job running (in progress), one waiting for 30 s.
    now_ms = int((await redis.time())[0]) * 1000
    await redis.hset(keys.workers, "h:1", orjson.dumps({"queues": ["manual"], "pid": 1}))
    queue = keys.shard_for("q").queue("manual")
    running_job, old_job = keys.job_id("q", "a", 1, 1), keys.job_id("q", "b", 1, 1)
    await redis.zadd(queue, {running_job: now_ms - 100_000, old_job: now_ms - 30_000})
    await redis.set(f"arq:in-progress:{running_job}", b"1")
    async with running(d):
        await wait_for(d.ready.is_set, message="dispatcher ready (serving metrics)")
        for i in range(3):
            await submit(redis, keys, "parked", f"p{i}")
        for i in range(2):
            await submit(redis, keys, "approval", f"a{i}")
        await redis.xadd(keys.shard(0).inbox, {"m": b"not json"})

        expected: list[tuple[str, dict[str, str], float | None]] = [
            ("relaygraph_queue_depth", {"queue": "parked"}, 3),
            ("relaygraph_queue_workers", {"queue": "parked"}, 0),
            ("relaygraph_queue_depth", {"queue": "manual"}, 2),
            ("relaygraph_queue_workers", {"queue": "manual"}, 1),
            ("relaygraph_workers", {}, 1),
            ("relaygraph_runs", {"status": "waiting"}, 2),
            ("relaygraph_runs", {"status": "running"}, 3),
            ("relaygraph_dead_letter_stream_length", {}, 1),
            ("relaygraph_dead_letters_total", {"source": "inbox"}, 1),
            ("relaygraph_inbox_pending", {}, 0),
            ("relaygraph_fleet_scrape_ok", {}, 1),
            # counted once the apply has returned, a moment after the gauges can show it
            ("relaygraph_runs_started_total", {"graph": "parked"}, 3),
            ("relaygraph_runs_started_total", {"graph": "approval"}, 2),
        ]
        last: list[tuple[str, dict[str, str], float | None]] = []

        async def settled() -> Samples | None:
            nonlocal last
            samples = await scrape(port)
            last = [(name, labels, value(samples, name, **labels)) for name, labels, _ in expected]
            return samples if last == expected else None

        found = await wait_for(settled, timeout=15, message=lambda: f"gauges {last}")
    samples: Samples = found or {}
    manual_age = value(samples, "relaygraph_queue_oldest_job_age_seconds", queue="manual")
    assert manual_age is not None and 29 <= manual_age < 60, "the running job is skipped"
    parked_age = value(samples, "relaygraph_queue_oldest_job_age_seconds", queue="parked")
    assert parked_age is not None and 0 <= parked_age < 15
    assert value(samples, "relaygraph_inbox_oldest_pending_age_seconds") == 0


def test_a_scrape_without_redis_answers_with_fleet_scrape_ok_0() -> None:
    port = free_port()  # nothing listens there
    client = connect_sync(
        f"redis://127.0.0.1:{port}/0", socket_timeout=0.5, socket_connect_timeout=0.5
    )
    registry = CollectorRegistry()
    registry.register(FleetCollector(client, keys_for()))
    try:
        samples = parse(generate_latest(registry).decode())
    finally:
        client.close()
    assert value(samples, "relaygraph_fleet_scrape_ok") == 0
    assert "relaygraph_queue_depth" not in samples
    assert "relaygraph_runs" not in samples


# --- JSON logs ----------------------------------------------------------------------------


@contextlib.contextmanager
def json_lines(logger: str) -> Iterator[io.StringIO]:
    """What ``logger`` logs meanwhile, at DEBUG, formatted by the JSON formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(logger)
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def counting_graph() -> Graph:
    g = Graph(id="counted")
    g.add_nodes(Node("start", type="start"), Node("count", type="count"), Node("end", type="end"))
    g.connect("start", "count")
    g.connect("count", "end")
    return g.validate_graph()


def worker_process(redis_url: str, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGRAPH_")}
    env.update(RELAYGRAPH_REDIS_URL=redis_url, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.update(RELAYGRAPH_SHARDS=str(SHARDS))
    argv = [sys.executable, "-m", "worker", "--handlers", "tests.e2e.history_handlers", *flags]
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=parent_death_hook(signal.SIGKILL),  # noqa: PLW1509 - it only calls prctl
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def parsed_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    objects = [orjson.loads(line) for line in lines]  # every line is one JSON object
    for o in objects:
        assert {"ts", "level", "logger", "message"} <= o.keys(), o
        assert o["ts"].endswith("Z")
    return objects


async def test_json_logs_carry_the_ids_and_the_worker_flags_work(
    redis: Any, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    proc = worker_process(
        redis_url, log, "--metrics-port", str(port), "--log-format", "json", "--log-level", "DEBUG"
    )
    d = Dispatcher(redis, DispatcherSettings(shards=SHARDS, redis_url=redis_url))
    await d.store.register_graph(counting_graph())
    runs = ["j1", "j2"]
    try:

        def worker_ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}: {log.read_text()}")
            return "with handlers for" in log.read_text()

        await wait_for(worker_ready, timeout=30, message="worker ready")
        with json_lines("relaygraph") as dispatcher_log:
            async with running(d):
                for run_id in runs:
                    await submit(redis, d.keys, "counted", run_id)
                await all_finished(d, runs)
                await redis.xadd(
                    d.keys.shard_for("j1").inbox, {"m": encode_inbox(CancelRequested(run_id="j1"))}
                )
                await wait_for(
                    lambda: "ignored cancel" in dispatcher_log.getvalue(),
                    message="the late cancel to be ignored",
                )
        samples = await scrape(port)
        await wait_for(lambda: log.read_text().count("\"node 'count'") >= 2, message="logs")
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()

    labels = {"node_type": "count", "queue": "default", "outcome": "completed"}
    assert value(samples, "relaygraph_node_attempts_total", **labels) == 2
    assert value(samples, "relaygraph_node_duration_seconds_count", **labels) == 2

    lines = parsed_lines(log.read_text())
    per_node = [o for o in lines if o["message"].startswith("node 'count' visit 1 attempt 1")]
    assert sorted(o["run_id"] for o in per_node) == runs
    for o in per_node:
        assert (o["node_id"], o["graph_id"], o["visit"], o["attempt"]) == ("count", "counted", 1, 1)
        assert (o["logger"], o["level"]) == ("relaygraph.worker", "DEBUG")
    # lines not about a job carry no ids
    ready = next(o for o in lines if "with handlers for" in o["message"])
    assert "run_id" not in ready

    ignored = [o for o in parsed_lines(dispatcher_log.getvalue()) if "ignored" in o["message"]]
    assert [o["run_id"] for o in ignored] == ["j1"]


# --- relaygraph up ------------------------------------------------------------------------


def test_up_serves_metrics_on_consecutive_ports_and_logs_json(
    redis_url: str, tmp_path: Path
) -> None:
    base = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGRAPH_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", RELAYGRAPH_METRICS_PORT=str(base))
    env.update(RELAYGRAPH_SHARDS=str(SHARDS))
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    argv = [RELAYGRAPH, "up", "--redis", redis_url, "--prefix", "up-metrics"]
    argv += ["--handlers", "tests.e2e.history_handlers", "--workers", "2", "--log-format", "json"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=parent_death_hook(signal.SIGKILL),  # noqa: PLW1509 - it only calls prctl
        )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"up exited {proc.returncode}: {err.read_text()}")
            return "relaygraph up: dispatcher" in out.read_text()

        wait_until_sync(up, timeout=60, interval=0.05, message=lambda: f"up: {err.read_text()}")
        dispatcher = scrape_sync(base)
        workers = [scrape_sync(base + i) for i in (1, 2)]
    finally:
        code = stop(proc)
    assert code == 0, err.read_text()
    assert f"workers on {base + 1}-{base + 2}" in out.read_text()
    assert value(dispatcher, "relaygraph_fleet_scrape_ok") == 1
    assert value(dispatcher, "relaygraph_workers") == 2
    assert "relaygraph_transitions_total" in dispatcher
    for w in workers:
        assert "relaygraph_node_attempts" in w and "relaygraph_fleet_scrape_ok" not in w
    assert parsed_lines(err.read_text())  # the dispatcher's and the workers' lines, all JSON


# --- what is counted (pure: no server) ----------------------------------------------------


def small_graph() -> Graph:
    g = Graph(id="g")
    g.add_nodes(Node("start", type="start"), Node("w", type="work"), Node("end", type="end"))
    g.connect("start", "w")
    g.connect("w", "end")
    return g.validate_graph()


def _t(*events: tuple[str, str | None]) -> Transition:
    return Transition(history=[HistoryEvent(type=k, at=0.0, node_id=n) for k, n in events])


def _value(metrics: DispatcherMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_dispatcher_counts_runs_retries_and_transitions_from_the_history() -> None:
    m = DispatcherMetrics()
    g = small_graph()
    m.applied(g, _t(("run.submitted", None), ("node.enqueued", "w")))
    m.applied(g, _t(("node.retry_scheduled", "w"), ("node.enqueued", "w")))
    m.applied(g, _t(("node.completed", "w"), ("run.completed", None)))
    m.applied(g, _t(("run.submitted", None)))
    m.applied(g, _t(("run.cancelled", None)))
    m.ignored("cancel")
    m.dead_lettered("approvals")
    assert _value(m, "relaygraph_transitions_total") == 5
    assert _value(m, "relaygraph_runs_started_total", graph="g") == 2
    assert _value(m, "relaygraph_runs_finished_total", graph="g", status="completed") == 1
    assert _value(m, "relaygraph_runs_finished_total", graph="g", status="cancelled") == 1
    assert _value(m, "relaygraph_node_retries_total", graph="g", node_type="work") == 1
    assert _value(m, "relaygraph_inbox_ignored_total", kind="cancel") == 1
    assert _value(m, "relaygraph_dead_letters_total", source="approvals") == 1
    NO_METRICS.applied(g, _t(("run.submitted", None)))  # counts nothing, raises nothing


def test_worker_counts_attempts_and_times_the_handlers_that_ran() -> None:
    m = WorkerMetrics()
    m.attempt("work", "default", "completed", 0.02)
    m.attempt("work", "default", "completed", 0.5)
    m.attempt("work", "default", "failed", None)  # e.g. no handler for the type
    labels = {"node_type": "work", "queue": "default"}
    get = m.registry.get_sample_value
    assert get("relaygraph_node_attempts_total", {**labels, "outcome": "completed"}) == 2
    assert get("relaygraph_node_attempts_total", {**labels, "outcome": "failed"}) == 1
    assert get("relaygraph_node_duration_seconds_count", {**labels, "outcome": "completed"}) == 2
    assert get("relaygraph_node_duration_seconds_count", {**labels, "outcome": "failed"}) == 0
    bucket = {**labels, "outcome": "completed", "le": "0.025"}
    assert get("relaygraph_node_duration_seconds_bucket", bucket) == 1


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"^\| `(relaygraph_\w+)` \|", doc, flags=re.MULTILINE))
    snapshot = FleetSnapshot(
        queues={"default": QueueStats(1, 1.0, 1)},
        workers=1,
        inbox_length=1,
        inbox_pending=0,
        inbox_oldest_pending_age_s=0.0,
        inbox_lag=0,
        dead_letters=0,
        timers=0,
        running_attempts=0,
        runs={"running": 1},
    )
    collector = FleetCollector(connect_sync("redis://127.0.0.1:1/0"), keys_for())
    collector.reader.read = lambda: snapshot  # type: ignore[method-assign]
    families = [
        *DispatcherMetrics().registry.collect(),
        *WorkerMetrics().registry.collect(),
        *collector.collect(),
    ]
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert exposed == documented


# --- flags and settings (no server) -------------------------------------------------------


def test_metrics_port_and_log_format_settings_from_the_environment() -> None:
    env = {"RELAYGRAPH_METRICS_PORT": "9100", "RELAYGRAPH_LOG_FORMAT": "json"}
    settings = load_settings(WorkerSettings, env=env)
    assert (settings.metrics_port, settings.log_format) == (9100, "json")
    assert load_settings(DispatcherSettings, {"metrics_port": 9200}, env).metrics_port == 9200
    for bad in ({"RELAYGRAPH_METRICS_PORT": "0"}, {"RELAYGRAPH_METRICS_PORT": "70000"}):
        with pytest.raises(SettingsError, match="metrics_port"):
            load_settings(DispatcherSettings, env=bad)
    with pytest.raises(SettingsError, match="log_format"):
        load_settings(DispatcherSettings, env={"RELAYGRAPH_LOG_FORMAT": "xml"})


def test_worker_command_forwards_the_observability_flags() -> None:
    import argparse

    args = argparse.Namespace(
        redis=None,
        prefix=None,
        handlers="m",
        queue=None,
        concurrency=None,
        metrics_port=9101,
        log_format="json",
        log_level="DEBUG",
    )
    assert worker_argv(args)[3:] == [
        "--handlers",
        "m",
        "--metrics-port",
        "9101",
        "--log-format",
        "json",
        "--log-level",
        "DEBUG",
    ]


def test_worker_pool_gives_each_slot_its_port_and_drops_the_inherited_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAYGRAPH_METRICS_PORT", "9100")
    pool = WorkerPool(
        redis_url="redis://h/0", prefix="p", handlers="m", queues=["q"], metrics_port=9101
    )
    assert [pool.slot_arguments(i) for i in (0, 2)] == [
        ["--metrics-port", "9101"],
        ["--metrics-port", "9103"],
    ]
    assert "RELAYGRAPH_METRICS_PORT" not in pool.environment()
    plain = WorkerPool(redis_url="redis://h/0", prefix="p", handlers="m", queues=["q"])
    assert plain.slot_arguments(0) == []
