"""The sharded key layout (docs/cluster-plan.md) end to end, on one server: ``relaygraph up``
with ``RELAYGRAPH_SHARDS=4`` (a dispatcher, two worker processes) runs fan-out/join runs,
chains, an approval and a cancellation over four shards, each node executed once, and
nothing is written under the one-server layout's names. A submission put in the wrong
shard's inbox (a raw one without a run id) is handed on to its run's."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from dispatcher.client import RunExists, WorkflowClient
from dispatcher.connect import check_layout as dispatcher_check_layout
from dispatcher.connect import connect_sync
from dispatcher.fleet import FleetReader
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from dispatcher.sync_client import SyncWorkflowClient
from graph_core.conditions import Condition
from graph_core.errors import RelaygraphError
from graph_core.keys import Keys, key_slot
from graph_core.messages import SubmitRequest, encode_inbox
from graph_core.model import Edge, Graph, Node
from relaygraph.embedded_cluster import EmbeddedCluster
from tests.e2e.test_examples_cli import RELAYGRAPH, cli_env, relaygraph_up
from tests.e2e.test_run_operations import HANDLERS, counts, deployment
from tests.support.api import as_key, in_process_api
from tests.support.waiting import wait_for
from worker.waking import check_layout as worker_check_layout

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARDS = 4


@contextlib.contextmanager
def subprocess_dispatcher(
    argv: list[str], env: dict[str, str], log: Path | None = None
) -> Iterator[None]:
    """One more dispatcher process, stopped (SIGTERM) at the end of the block; its log goes
    to ``log``, or a temporary file (a pipe nobody reads would block it once full)."""
    with log.open("w+b") if log else tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out
        )
        try:
            yield
            proc.terminate()
            code = proc.wait(timeout=30)
            out.seek(0)
            assert code == 0, out.read().decode(errors="replace")[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _graph() -> Graph:
    """start -> fan -> (x, y) -> join -> gate? -> end; ``gate`` only when input.approve."""
    g = Graph(id="sharded").add_nodes(
        Node("start", type="start"),
        Node("fan", type="count", fan_out=True),
        Node("x", type="count"),
        Node("y", type="count"),
        Node("join", type="count"),
        Node("end", type="end"),
    )
    g.connect("start", "fan")
    for n in ("x", "y"):
        g.connect("fan", n, "join")
    return g.connect("join", "end").validate_graph()


def _gated() -> Graph:
    g = Graph(id="gated").add_nodes(
        Node("start", type="start"),
        Node("prep", type="count"),
        Node("gate", type="human"),
        Node("after", type="count"),
        Node("end", type="end"),
    )
    return g.connect("start", "prep", "gate", "after", "end").validate_graph()


async def test_runs_over_four_shards_on_one_server(redis_url: str, redis: aioredis.Redis) -> None:
    prefix = f"sh-{secrets.token_hex(4)}"
    keys = Keys(prefix, SHARDS)
    env = {"RELAYGRAPH_SHARDS": str(SHARDS)}
    with deployment(redis_url, prefix, "--workers", "2", env_extra=env):
        async with WorkflowClient.from_url(redis_url, prefix=prefix, shards=SHARDS) as client:
            await client.register_graph(_graph())
            await client.register_graph(_gated())
            runs = [await client.submit("sharded", {"i": i}) for i in range(24)]
            gated = await client.submit("gated", {})
            doomed = await client.submit("gated", {})
            # a raw submission with no run id, put in shard 0's inbox: its entry id names
            # the run, whose shard may be another
            entry = await redis.xadd(
                keys.shard(0).inbox, {"m": encode_inbox(SubmitRequest(graph_id="sharded"))}
            )
            raw_run = entry.decode()
            # submission keys: a run id the client makes lands in the key's shard; one the
            # caller gives in another shard has its key claimed apart
            once = await client.submit("sharded", {}, idempotency_key="once")
            assert await client.submit("sharded", {}, idempotency_key="once") == once
            assert keys.shard_for(once) is keys.idempotency_shard("once")
            mine = next(
                f"mine-{i}"
                for i in range(100)
                if keys.shard_for(f"mine-{i}") is not keys.idempotency_shard("twice")
            )
            assert await client.submit("sharded", {}, idempotency_key="twice", run_id=mine) == mine
            again = await client.submit("sharded", {}, idempotency_key="twice", run_id=mine)
            assert again == mine  # the same submit again: its run, as on one server
            assert await client.submit("sharded", {}, idempotency_key="twice") == mine
            runs += [once, mine]
            for run_id in runs:
                assert (await client.wait(run_id, timeout=60)).status == "completed", run_id
            assert (await client.wait(raw_run, timeout=30)).status == "completed"

            async def waiting(run_id: str) -> bool:
                view = await client.get_run(run_id)
                return view is not None and view.status == "waiting"

            await wait_for(lambda: waiting(gated), message="the gated run waits")
            await wait_for(lambda: waiting(doomed), message="the second gated run waits")
            # reads over every shard: an approvals inbox, counts, pages of a listing
            assert set(await client.store.oldest_in_status("waiting", 10)) == {gated, doomed}
            counts_now = await client.store.count_by_status(["waiting", "completed"])
            assert counts_now == {"waiting": 2, "completed": len(runs) + 1}
            seen: list[tuple[str, int]] = []
            before = None
            while page := await client.store.page_runs("completed", "sharded", 5, before):
                seen += page
                before = (page[-1][1], page[-1][0])
            listed = await client.list_runs("completed", 500, "sharded")
            assert [r for r, _ in seen] == [summary.run_id for summary in listed]
            assert sorted(r for r, _ in seen) == sorted([*runs, raw_run])  # each once
            assert [(sc, r) for r, sc in seen] == sorted(((sc, r) for r, sc in seen), reverse=True)
            await client.approve(gated, "gate", actor="tester", durable=False)  # published
            await client.cancel(doomed)
            assert (await client.wait(gated, timeout=30)).status == "completed"
            assert (await client.wait(doomed, timeout=30)).status == "cancelled"

        for run_id in [*runs, raw_run]:
            assert await counts(redis, prefix, run_id) == {"fan": 1, "x": 1, "y": 1, "join": 1}
        assert await counts(redis, prefix, gated) == {"prep": 1, "after": 1}
        assert await counts(redis, prefix, doomed) == {"prep": 1}
    assert len({keys.shard_for(r).shard for r in runs}) == SHARDS  # every shard had runs
    for shard in range(SHARDS):  # each shard's index holds its own runs only
        indexed = {m.decode() for m in await redis.zrange(keys.shard(shard).runs_all, 0, -1)}
        assert indexed and all(keys.shard_for(r).shard == shard for r in indexed)
    one_server = Keys(prefix)
    for name in (one_server.inbox, one_server.timers, one_server.leases, one_server.runs_all):
        assert not await redis.exists(name), name
    assert not await redis.exists(one_server.run(runs[0]).meta)


async def test_a_process_with_another_layout_than_the_deployments_is_refused(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """The first process records the layout; a dispatcher or worker started later with
    another shard count refuses to start, naming both, before it writes anything else."""
    prefix = f"lay-{secrets.token_hex(4)}"
    await dispatcher_check_layout(redis, Keys(prefix))  # the first: one server's layout
    assert await redis.get(f"{prefix}:layout") == b"0"
    await worker_check_layout(redis, Keys(prefix))  # the same: fine
    settings = DispatcherSettings(redis_url=redis_url, prefix=prefix, shards=SHARDS)
    with pytest.raises(RelaygraphError, match=r"in 0 shards .* started with 4"):
        await Dispatcher(redis, settings).run()
    with pytest.raises(RelaygraphError, match="RELAYGRAPH_SHARDS"):
        await worker_check_layout(redis, Keys(prefix, SHARDS))
    assert await redis.keys(f"{prefix}*") == [f"{prefix}:layout".encode()]
    # a client with another layout refuses its first write (a run no dispatcher would see)
    with SyncWorkflowClient.from_url(redis_url, prefix=prefix, shards=SHARDS) as client:
        client.register_graph(_graph())
        with pytest.raises(RelaygraphError, match=r"in 0 shards .* started with 4"):
            client.submit("sharded", {})
    assert not await redis.keys(f"{prefix}:{{*}}:*")  # nothing in any shard
    listed = subprocess.run(
        [RELAYGRAPH, "runs", "--redis", redis_url, "--prefix", prefix],
        env={**cli_env(), "RELAYGRAPH_SHARDS": str(SHARDS)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode != 0 and "RELAYGRAPH_SHARDS" in listed.stderr, listed


def _loop() -> Graph:
    """start -> loop (runs 3 visits: again while its own count is under 3) -> end."""
    g = Graph(id="looped").add_nodes(
        Node("start", type="start"),
        Node("loop", type="count", max_visits=5),
        Node("end", type="end"),
    )
    g.connect("start", "loop")
    g.add_edges(
        Edge("loop", "loop", condition=Condition.field("loop.output.n").lt(3)),
        Edge("loop", "end", condition=Condition.otherwise()),
    )
    return g.validate_graph()


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(primaries=3) as c:
        yield c


async def test_200_runs_on_a_three_primary_cluster(
    cluster: EmbeddedCluster, redis_url: str, redis: aioredis.Redis
) -> None:
    """The multi-process scenario on a real Redis Cluster (3 primaries, 16 shards): two
    dispatchers, three workers, 200 runs with fan-out/join, a loop and an approval. Every
    (run, node, visit) executed once, runs in every shard, no CROSSSLOT anywhere (a
    refused command would fail its run or stop its process). The handlers count on the
    test's own server (``redis_url``), not on the cluster."""
    prefix = f"cl-{secrets.token_hex(4)}"
    shards = 16
    url = f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
    env = {
        **cli_env(),
        "RELAYGRAPH_SHARDS": str(shards),
        "OPS_TEST_REDIS": redis_url,
        "OPS_TEST_KEY": f"{prefix}-probe",
    }
    flags = ["--redis", url, "--prefix", prefix, "--handlers", HANDLERS]
    keys = Keys(prefix, shards)
    with (
        relaygraph_up([*flags, "--workers", "3"], env=env),
        subprocess_dispatcher([RELAYGRAPH, "dispatcher", "--redis", url, "--prefix", prefix], env),
    ):
        async with WorkflowClient.from_url(url, prefix=prefix, shards=shards) as client:
            for g in (_graph(), _loop(), _gated()):
                await client.register_graph(g)
            fans = [await client.submit("sharded", {"i": i}) for i in range(150)]
            loops = [await client.submit("looped", {"i": i}) for i in range(40)]
            gated = [await client.submit("gated", {"i": i}) for i in range(10)]
            for run_id in gated:

                async def waiting(run_id: str = run_id) -> bool:
                    view = await client.get_run(run_id)
                    return view is not None and view.status == "waiting"

                await wait_for(waiting, timeout=60, message=f"run {run_id} waits")
                await client.approve(run_id, "gate", actor="tester", durable=run_id != gated[0])
            views = {}
            for run_id in [*fans, *loops, *gated]:
                views[run_id] = await client.wait(run_id, timeout=120)
                assert views[run_id].status == "completed", (run_id, views[run_id].error)
            listed = await client.list_runs("completed", 500)  # over every shard and node
            assert sorted(r.run_id for r in listed) == sorted(views)
            fleet = FleetReader(connect_sync(url), keys).read()  # the gauges a scrape reads
            assert fleet.runs["completed"] == 200 and fleet.runs["running"] == 0
            assert fleet.workers == 3 and fleet.queues["default"].depth == 0
            assert fleet.inbox_pending == 0 and fleet.running_attempts == 0
    for run_id in fans:
        assert await counts(redis, prefix, run_id) == {"fan": 1, "x": 1, "y": 1, "join": 1}
    for run_id in loops:
        assert await counts(redis, prefix, run_id) == {"loop": 3}
        assert views[run_id].nodes["loop"].visits == 3
    for run_id in gated:
        assert await counts(redis, prefix, run_id) == {"prep": 1, "after": 1}
    assert {keys.shard_for(r).shard for r in [*fans, *loops, *gated]} == set(range(shards))
    # the shards' keys are spread over the three primaries
    owners = {cluster.primary_for(key_slot(keys.shard(k).inbox)) for k in range(shards)}
    assert owners == {0, 1, 2}


async def test_the_api_on_a_sharded_deployment_reads_every_shard(redis_url: str) -> None:
    """/readyz sees the dispatcher (its consumer on every shard's inbox) and the queues of
    every shard; GET /v1/runs lists the runs of every shard, newest first."""
    prefix = f"shapi-{secrets.token_hex(4)}"
    settings = DispatcherSettings(redis_url=redis_url, prefix=prefix, shards=SHARDS)
    redis_client = aioredis.Redis.from_url(redis_url)
    dispatcher = Dispatcher(redis_client, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        await wait_for(dispatcher.ready.is_set, message="dispatcher ready")
        async with in_process_api(redis_url, prefix=prefix, shards=SHARDS) as api:
            r = await api.post("/v1/graphs", json=_graph().to_dict(), headers=as_key("admin"))
            assert r.status_code == 201, r.text
            ids = []
            for i in range(8):
                r = await api.post(
                    "/v1/runs",
                    json={"graph_id": "sharded", "input": {"i": i}},
                    headers=as_key("admin"),
                )
                assert r.status_code in (200, 201, 202), r.text
                ids.append(r.json()["run_id"])
            assert len({Keys(prefix, SHARDS).shard_for(r).shard for r in ids}) > 1
            ready = await api.get("/readyz")
            assert ready.status_code == 200 and ready.json()["dispatchers"] == 1, ready.text
            assert ready.json()["queues"] == {}  # no worker registered: no queue named
            listed = await api.get("/v1/runs?limit=50", headers=as_key("admin"))
            assert listed.status_code == 200, listed.text
            assert sorted(run["run_id"] for run in listed.json()["runs"]) == sorted(ids)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await redis_client.aclose()


async def test_a_keyed_submit_whose_run_id_another_run_holds_lets_its_key_go(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Sharded, a caller's run id in another shard than its key's: the key is claimed
    apart. If the run id turns out taken by another run (no key), the submit says so and
    lets the key go, so that the key starts a run later."""
    prefix = f"shkey-{secrets.token_hex(4)}"
    keys = Keys(prefix, SHARDS)
    async with WorkflowClient.from_url(redis_url, prefix=prefix, shards=SHARDS) as client:
        await client.register_graph(_graph())
        taken = next(
            f"taken-{i}"
            for i in range(100)
            if keys.shard_for(f"taken-{i}") is not keys.idempotency_shard("k-3")
        )
        await client.submit("sharded", {}, run_id=taken)  # no key
        with pytest.raises(RunExists):
            await client.submit("sharded", {}, idempotency_key="k-3", run_id=taken)
        assert not await redis.exists(keys.idempotency("k-3"))
        fresh = await client.submit("sharded", {}, idempotency_key="k-3")
        assert fresh != taken and await redis.get(keys.idempotency("k-3")) == fresh.encode()
