"""Triggers against a real server: scheduled ticks submitted by two dispatchers start one run
each (with and without catch-up), events start the runs of the graphs that listen for them
(filters, idempotency), signed webhook calls start runs (bad, stale and replayed signatures
refused), and ``relaygraph triggers`` lists them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher.client import WorkflowClient
from dispatcher.schedules import Schedules
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core import clock
from graph_core.model import Graph
from graph_core.triggers import SIGNATURE_HEADER, sign
from tests.e2e.test_examples_cli import RELAYGRAPH, ROOT, cli_env
from tests.support.api import as_key, in_process_api
from tests.support.dispatching import serving
from tests.support.layout import SHARDS, keys_for
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

HOOK_ENV = "RELAYGRAPH_TEST_HOOK_SECRET"


def graph(gid: str, *triggers: dict[str, Any]) -> Graph:
    return Graph.from_dict(
        {
            "id": gid,
            "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "end"}],
            "edges": [{"source": "start", "target": "end"}],
            "triggers": list(triggers),
        }
    )


@pytest.fixture
async def dispatcher(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Dispatcher]:
    # its own schedule loop off: the test drives ticks at times of its choosing
    settings = DispatcherSettings(shards=SHARDS, redis_url=redis_url, schedules=False)
    async with serving(Dispatcher(redis, settings)) as d:
        yield d


async def runs_of(client: WorkflowClient, graph_id: str, n: int) -> list[Any]:
    async def enough() -> list[Any] | None:
        found = await client.list_runs(graph_id=graph_id, limit=1000)
        done = [r for r in found if r.status.value == "completed"]
        return done if len(done) >= n else None

    return await wait_for(enough, timeout=15, message=f"{n} completed runs of {graph_id}")


async def inbox_handled(redis: aioredis.Redis) -> None:
    """Until the dispatchers' group has read and acknowledged every inbox entry."""

    keys = keys_for()

    async def drained() -> bool:
        for k in range(max(1, keys.shards)):  # every shard's inbox (one server: the inbox)
            groups = await redis.xinfo_groups(keys.shard(k).inbox)
            if any(group["lag"] or group["pending"] for group in groups):
                return False
        return True

    await wait_for(drained, timeout=15, message="the inbox handled")


async def test_two_dispatchers_start_one_run_per_tick(
    redis: aioredis.Redis, dispatcher: Dispatcher
) -> None:
    client = WorkflowClient(redis, shards=SHARDS)
    every = {"type": "scheduled", "id": "every", "cron": "* * * * *", "input": {"k": 1}}
    catching = {"type": "scheduled", "id": "catch", "cron": "* * * * *", "catch_up": True}
    await client.register_graph(graph("cron-a", every))
    await client.register_graph(graph("cron-b", catching))
    keys = keys_for()
    first, second = Schedules(redis, keys, client.store), Schedules(redis, keys, client.store)
    t0 = 60 * (int(clock.now()) // 60) - 3600  # an hour ago, on a minute
    assert await first.tick(now=t0 + 1) == 0  # first sight: nothing retroactive
    assert await second.tick(now=t0 + 1) == 0
    for minute in (1, 2, 3):  # both dispatchers see each tick, a few seconds late
        await first.tick(now=t0 + 60 * minute + 2)
        await second.tick(now=t0 + 60 * minute + 3)
    runs = await runs_of(client, "cron-a", 3)
    await inbox_handled(redis)  # every duplicate submission of a tick handled too
    assert len(await client.list_runs(graph_id="cron-a", limit=100)) == 3
    keys_used = set()
    for summary in runs:
        rec = await client.store.get_run(summary.run_id)
        assert rec is not None and rec.input == {"k": 1}
        keys_used.add(rec.idempotency_key)
    assert keys_used == {f"trigger:cron-a:every:{t0 + 60 * m}" for m in (1, 2, 3)}
    assert len(await client.list_runs(graph_id="cron-b", limit=100)) == 3

    # ten minutes down: cron-a skips the missed ticks, cron-b (catch_up) runs every one
    await first.tick(now=t0 + 60 * 13 + 30)
    await second.tick(now=t0 + 60 * 13 + 31)
    await runs_of(client, "cron-b", 13)
    await inbox_handled(redis)
    assert len(await client.list_runs(graph_id="cron-a", limit=100)) == 3
    assert len(await client.list_runs(graph_id="cron-b", limit=100)) == 13
    # and the skipped ticks stay skipped
    await first.tick(now=t0 + 60 * 14 + 1)
    await runs_of(client, "cron-a", 4)


async def test_events_start_the_runs_whose_filters_match(
    redis: aioredis.Redis, dispatcher: Dispatcher
) -> None:
    client = WorkflowClient(redis, shards=SHARDS)
    bugs = {
        "type": "event",
        "event": "issue.opened",
        "filter": {"type": "field", "path": "input.kind", "op": "eq", "value": "bug"},
    }
    await client.register_graph(graph("on-bug", bugs))
    await client.register_graph(graph("on-any", {"type": "event", "event": "issue.opened"}))
    await client.register_graph(graph("other", {"type": "event", "event": "pr.merged"}))
    started = await client.emit("issue.opened", {"kind": "bug", "n": 1})
    assert sorted(g for g, _ in started) == ["on-any", "on-bug"]
    for _, run_id in started:
        view = await client.wait(run_id, timeout=10)
        assert view.status == "completed" and view.input == {"kind": "bug", "n": 1}
    docs = await client.emit("issue.opened", {"kind": "docs"})
    assert [g for g, _ in docs] == ["on-any"]
    assert await client.emit("nobody.listens", {}) == []
    once = await client.emit("pr.merged", {"n": 7}, idempotency_key="merge-7")
    again = await client.emit("pr.merged", {"n": 7}, idempotency_key="merge-7")
    assert once == again and len(once) == 1
    # a new version that no longer listens stops the runs
    await client.register_graph(graph("on-any").model_copy(update={"version": 2}))
    assert [g for g, _ in await client.emit("issue.opened", {"kind": "bug"})] == ["on-bug"]


async def test_signed_webhooks(
    redis: aioredis.Redis, redis_url: str, dispatcher: Dispatcher, monkeypatch: Any
) -> None:
    monkeypatch.setenv(HOOK_ENV, "s3cret")
    client = WorkflowClient(redis, shards=SHARDS)
    await client.register_graph(
        graph("hooked", {"type": "webhook", "id": "gh", "secret_env": HOOK_ENV})
    )
    await client.register_graph(
        graph("unset", {"type": "webhook", "id": "x", "secret_env": "RELAYGRAPH_TEST_UNSET"})
    )
    async with in_process_api(redis_url) as api:
        body = orjson.dumps({"action": "opened", "n": 3})
        url = "/v1/hooks/hooked/gh"

        async def call(
            signature: str | None, data: bytes = body, path: str = url
        ) -> httpx.Response:
            headers = {"content-type": "application/json"}
            if signature is not None:
                headers[SIGNATURE_HEADER] = signature
            return await api.post(path, content=data, headers=headers)

        good = sign("s3cret", body, clock.now())
        r = await call(good)
        assert r.status_code == 201, r.text
        (started,) = r.json()["runs"]
        view = await client.wait(started["run_id"], timeout=10)
        assert view.status == "completed" and view.input == {"action": "opened", "n": 3}
        replay = await call(good)
        assert replay.status_code == 409 and replay.json()["type"].endswith(":replayed")
        assert (await call(None)).status_code == 401
        assert (await call(sign("wrong", body, clock.now()))).status_code == 401
        tampered = await call(sign("s3cret", body, clock.now()), data=b'{"n": 4}')
        assert tampered.status_code == 401 and "does not match" in tampered.json()["detail"]
        stale = await call(sign("s3cret", body, clock.now() - 600))
        assert stale.status_code == 401 and "replay" in stale.json()["detail"]
        assert (await call(good, path="/v1/hooks/hooked/nope")).status_code == 404
        assert (await call(good, path="/v1/hooks/nograph/gh")).status_code == 404
        unset = await call(good, path="/v1/hooks/unset/x")
        assert unset.status_code == 503 and "RELAYGRAPH_TEST_UNSET" in unset.json()["detail"]
        assert len(await client.list_runs(graph_id="hooked", limit=10)) == 1

        await client.register_graph(graph("evented", {"type": "event", "event": "ping"}))
        r = await api.post("/v1/events/ping", json={"data": {"x": 1}}, headers=as_key("submitter"))
        assert r.status_code == 200 and r.json()["runs"][0]["graph_id"] == "evented"
        denied = await api.post("/v1/events/ping", json={}, headers=as_key("viewer"))
        assert denied.status_code == 403


async def test_the_cli_lists_triggers_and_emits(redis: aioredis.Redis, redis_url: str) -> None:
    client = WorkflowClient(redis, shards=SHARDS)
    nightly = {"type": "scheduled", "id": "nightly", "cron": "0 2 * * *", "timezone": "Asia/Tokyo"}
    await client.register_graph(graph("listed", nightly, {"type": "event", "event": "go"}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**cli_env(), "RELAYGRAPH_REDIS_URL": redis_url, "RELAYGRAPH_SHARDS": str(SHARDS)}
        return subprocess.run(
            [RELAYGRAPH, *args],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = cli("triggers")
    assert listed.returncode == 0, listed.stderr
    assert "listed v1  nightly (scheduled)  0 2 * * * Asia/Tokyo: next " in listed.stdout
    assert "listed v1  event (event)  on event 'go'" in listed.stdout
    rows = orjson.loads(cli("triggers", "--json").stdout)
    (row,) = [r for r in rows if r["trigger_id"] == "nightly"]
    assert row["next_fire"] > clock.now() and row["last_fired"] is None
    emitted = cli("emit", "go", "--data", '{"a": 1}', "--json")
    assert emitted.returncode == 0, emitted.stderr
    (run,) = orjson.loads(emitted.stdout)
    assert run["graph_id"] == "listed"
    assert (await client.get_run(run["run_id"])) is not None
    nothing = cli("emit", "unheard")
    assert nothing.returncode == 0 and "no trigger matched" in nothing.stdout
    assert os.environ.get(HOOK_ENV) is None
