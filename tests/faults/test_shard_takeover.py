"""Two dispatcher processes with assigned shards (``RELAYGRAPH_SHARDS=4``, one serving 0-1,
the other 2-3) and two workers; the second dispatcher is SIGKILLed mid-load. The first
takes its shards over once their leases lapse (dispatcher/ownership.py), reclaims what the
dead one left pending, and every run completes, each node's handler started once."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from dispatcher.client import WorkflowClient
from graph_core.keys import Keys
from tests.faults.conftest import Deployment
from tests.faults.graphs import CHAIN_NODES, chain_graph, expected_output
from tests.faults.observe import Observer
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARDS = 4
RUNS = 120
KILL_AFTER = 30  # runs finished when the second dispatcher is killed
SETTINGS: dict[str, object] = {"shards": SHARDS, "shard_lease_s": 1, "claim_idle_s": 1}


async def _pending(redis: Any, keys: Keys) -> int:
    """Entries read and not acknowledged, over every shard's inbox."""
    total = 0
    for k in range(SHARDS):
        info = await redis.xpending(keys.shard(k).inbox, keys.inbox_group)
        total += int(info["pending"])
    return total


async def test_a_killed_dispatchers_shards_are_taken_over(deployment: Deployment) -> None:
    fleet, redis = deployment.fleet, deployment.redis
    keys = Keys(deployment.prefix, SHARDS)
    observe = Observer(redis, keys, deployment.marks)
    first = fleet.start_dispatcher(wait=False, serve_shards="0-1", **SETTINGS)
    second = fleet.start_dispatcher(wait=False, serve_shards="2-3", **SETTINGS)
    procs = [first, second, *(fleet.start_worker(wait=False, shards=SHARDS) for _ in range(2))]
    for proc in procs:
        await proc.ready()
    tag = f"tk-{secrets.token_hex(2)}"
    runs = {f"{tag}-{i}": {"n": 150 if i % 3 == 0 else 5} for i in range(RUNS)}
    async with WorkflowClient.from_url(
        deployment.redis_url, prefix=deployment.prefix, shards=SHARDS
    ) as client:
        await client.register_graph(chain_graph())
        submitting = asyncio.ensure_future(
            asyncio.gather(*(client.submit("chain", d, run_id=r) for r, d in runs.items()))
        )
        try:

            async def kill_time() -> bool:
                return await observe.finished_count(runs) >= KILL_AFTER

            await wait_for(kill_time, timeout=30, message=f"{KILL_AFTER} runs finished")
            # each holds its assigned shards' leases ("a:<host>-<pid>-<random>")
            for k, proc in enumerate([first, first, second, second]):
                lease = await redis.get(keys.shard(k).dispatcher)
                assert lease is not None and f"-{proc.pid}-" in lease.decode(), (k, lease)
                assert lease.startswith(b"a:"), (k, lease)
            finished_at_kill = await observe.finished_count(runs)
            logged_at_kill = len(first.text())
            second.kill()
        finally:
            await submitting
        records = await observe.wait_finished(runs, timeout=60, guard=fleet.check_alive)

    async def drained() -> bool:
        return await _pending(redis, keys) == 0

    await wait_for(drained, timeout=20, message="the killed dispatcher's entries reclaimed")
    for run_id, data in runs.items():
        assert records[run_id].status.value == "completed", (run_id, records[run_id].error)
        assert records[run_id].output == expected_output(data["n"]), run_id
    counts = {k: n for k, n in (await observe.started_counts()).items() if k.startswith(tag)}
    assert sorted(k for k, n in counts.items() if n > 1) == [], "a handler ran twice"
    assert len(counts) == RUNS * (len(CHAIN_NODES) + 1)  # a, b, c and big|small, once each
    log = first.text()[logged_at_kill:]  # (it may take shards over at start too, briefly)
    assert "taking over shard 2 from" in log and "taking over shard 3 from" in log, log[-3000:]
    assert fleet.died() == []
    print(f"\nkilled the second dispatcher with {finished_at_kill}/{RUNS} runs finished")
