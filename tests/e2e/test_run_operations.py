"""Run operations on a deployment (``relaygraph up``, two worker processes), with executions
counted by the handlers themselves: pausing a run with three nodes running, retrying a
failed run, re-running a finished run from a middle node."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatcher.client import RunStateError, WorkflowClient
from dispatcher.errors import InputError
from graph_core.model import Graph, Node
from tests.e2e.test_examples_cli import cli_env, relaygraph_up
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANDLERS = "tests.e2e.ops_handlers"


@contextmanager
def deployment(
    redis_url: str, prefix: str, *extra: str, env_extra: dict[str, str] | None = None
) -> Iterator[str]:
    # the handlers' own keys: not under the deployment's prefix (its keys live there)
    env = {**cli_env(), "OPS_TEST_REDIS": redis_url, "OPS_TEST_KEY": f"{prefix}-probe"}
    env.update(env_extra or {})
    flags = ["--redis", redis_url, "--prefix", prefix, "--handlers", HANDLERS]
    with relaygraph_up([*flags, *(extra or ("--workers", "2"))], env=env):
        yield prefix


async def counts(redis: aioredis.Redis, prefix: str, run_id: str) -> dict[str, int]:
    raw = await redis.hgetall(f"{prefix}-probe:runs")
    mine = f"{run_id}:".encode()
    return {k[len(mine) :].decode(): int(v) for k, v in raw.items() if k.startswith(mine)}


def fan_graph() -> Graph:
    """start -> fan -> (x, y, z, each 1.5 s) -> after -> end."""
    g = Graph(id="fan").add_nodes(
        Node("start", type="start"),
        Node("fan", type="count", fan_out=True),
        *[Node(n, type="count", config={"sleep": 1.5}) for n in ("x", "y", "z")],
        Node("after", type="count"),
        Node("end", type="end"),
    )
    g.connect("start", "fan")
    for n in ("x", "y", "z"):
        g.connect("fan", n, "after")
    return g.connect("after", "end").validate_graph()


def chain_graph() -> Graph:
    """start -> a -> flaky (fails its first time for good) -> c -> end."""
    g = Graph(id="chain").add_nodes(
        Node("start", type="start"),
        Node("a", type="count"),
        Node("flaky", type="count", config={"fail_once": True}),
        Node("c", type="count"),
        Node("end", type="end"),
    )
    return g.connect("start", "a", "flaky", "c", "end").validate_graph()


async def test_pause_with_three_nodes_running(redis_url: str, redis: aioredis.Redis) -> None:
    prefix = f"ops-{secrets.token_hex(4)}"
    with deployment(redis_url, prefix):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(fan_graph())
            run_id = await client.submit("fan", None)
            await wait_for(
                lambda: _running(redis, prefix), timeout=20, message="three nodes running"
            )
            await client.pause(run_id, actor="ops")

            async def paused() -> bool:
                view = await client.get_run(run_id)
                return view is not None and view.status == "paused"

            await wait_for(paused, timeout=10, message="the run paused")

            async def running_ones_done() -> bool:  # the nodes running at the pause finish
                view = await client.get_run(run_id)
                return view is not None and all(
                    view.nodes[n].status.value == "completed" for n in ("x", "y", "z")
                )

            await wait_for(running_ones_done, timeout=10, message="x, y and z completed")
            # the behaviour under test: a paused run starts nothing, here for 2 s
            await asyncio.sleep(2.0)
            view = await client.get_run(run_id)
            assert view is not None and view.status == "paused"
            assert {n: view.nodes[n].status.value for n in ("x", "y", "z")} == dict.fromkeys(
                ("x", "y", "z"), "completed"
            )
            assert view.nodes["after"].status.value == "held"
            assert "after" not in await counts(redis, prefix, run_id)
            with pytest.raises(RunStateError, match="only a running run"):
                await client.pause(run_id)
            await client.resume(run_id, actor="ops")
            final = await client.wait(run_id, timeout=20)
            assert final.status == "completed"
            assert await counts(redis, prefix, run_id) == dict.fromkeys(
                ("fan", "x", "y", "z", "after"), 1
            )
            types = [e["type"] for e in await client.history(run_id)]
            assert types.count("run.paused") == 1 and types.count("run.resumed") == 1
            with pytest.raises(RunStateError, match="completed"):
                await client.pause(run_id)


async def _running(redis: aioredis.Redis, prefix: str) -> bool:
    return int(await redis.get(f"{prefix}-probe:running") or 0) >= 3


async def test_retry_then_rerun_count_executions(redis_url: str, redis: aioredis.Redis) -> None:
    prefix = f"ops-{secrets.token_hex(4)}"
    with deployment(redis_url, prefix):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(chain_graph())
            run_id = await client.submit("chain", {"v": 1})
            failed = await client.wait(run_id, timeout=20)
            assert failed.status == "failed"
            assert await counts(redis, prefix, run_id) == {"a": 1, "flaky": 1}

            await client.retry(run_id, actor="ops")
            done = await _finished_again(client, run_id, after=failed.updated_at)
            assert done.status == "completed"
            # only the failed node ran again; a did not
            assert await counts(redis, prefix, run_id) == {"a": 1, "flaky": 2, "c": 1}

            with pytest.raises(InputError, match="no node 'nope'"):
                await client.rerun(run_id, "nope")
            await client.rerun(run_id, "flaky", input={"v": 2}, actor="ops")
            again = await _finished_again(client, run_id, after=done.updated_at)
            assert again.status == "completed" and again.input == {"v": 2}
            # exactly flaky and what follows it ran again
            assert await counts(redis, prefix, run_id) == {"a": 1, "flaky": 3, "c": 2}
            assert again.nodes["flaky"].visits == 3
            events = await client.history(run_id)
            (rerun,) = [e for e in events if e["type"] == "run.rerun"]
            assert rerun["data"]["actor"] == "ops" and rerun["data"]["from_node"] == "flaky"
            assert [e["type"] for e in events].count("run.retried") == 1


async def test_a_running_run_is_not_rerun(redis_url: str) -> None:
    prefix = f"ops-{secrets.token_hex(4)}"
    async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
        await client.register_graph(chain_graph())
        run_id = await client.submit("chain", None)  # no dispatcher: it stays pending
        with pytest.raises(RunStateError, match="it is pending"):
            await client.rerun(run_id, "a")


async def _finished_again(client: WorkflowClient, run_id: str, after: float = 0.0) -> Any:
    async def check() -> Any:
        view = await client.get_run(run_id)
        if view is not None and view.terminal and view.updated_at > after:
            return view
        return None

    return await wait_for(check, timeout=20, message=f"run {run_id} to finish again")


def order_graph() -> Graph:
    g = Graph(id="ordered").add_nodes(
        Node("start", type="start"), Node("job", type="order"), Node("end", type="end")
    )
    return g.connect("start", "job", "end").validate_graph()


async def test_higher_priority_jobs_start_first(redis_url: str, redis: aioredis.Redis) -> None:
    """One worker slot, busy: jobs of high-priority runs submitted after low ones start
    before them."""
    prefix = f"ops-{secrets.token_hex(4)}"
    with deployment(redis_url, prefix, "--workers", "1", "--concurrency", "1"):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(order_graph())
            blocker = await client.submit("ordered", {"label": "blocker", "hold": True})

            async def blocking() -> bool:
                return await redis.llen(f"{prefix}-probe:order") >= 1

            await wait_for(blocking, timeout=20, message="the blocker running")
            runs = [await client.submit("ordered", {"label": f"low{i}"}) for i in range(3)] + [
                await client.submit("ordered", {"label": f"high{i}"}, priority=50) for i in range(2)
            ]

            async def all_queued() -> bool:  # the blocker's job and the five behind it
                return await redis.zcard(f"{prefix}:queue:default") >= 6

            await wait_for(all_queued, timeout=20, message="the five jobs queued")
            await redis.rpush(f"{prefix}-probe:release", "go")
            for run_id in [blocker, *runs]:
                assert (await client.wait(run_id, timeout=30)).status == "completed"
            order = [x.decode() for x in await redis.lrange(f"{prefix}-probe:order", 0, -1)]
            # the high ones first; within a priority, jobs enqueued in the same ms tie
            assert order[0] == "blocker"
            assert set(order[1:3]) == {"high0", "high1"}
            assert set(order[3:]) == {"low0", "low1", "low2"}
            with pytest.raises(InputError, match="priority"):
                await client.submit("ordered", {"label": "x"}, priority=101)
