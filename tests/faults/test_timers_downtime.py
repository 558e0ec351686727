"""Durable timers: a retry backoff and a wait timeout that come due while no dispatcher
runs fire once a dispatcher is back."""

from __future__ import annotations

import time

import pytest

from graph_core.status import NodeStatus
from tests.faults.conftest import Deployment
from tests.faults.graphs import flaky_graph, timed_wait_graph
from tests.support.waiting import wait_for, wait_until_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_timers_fire_after_dispatcher_downtime(deployment: Deployment) -> None:
    fleet, client, observe, redis = (
        deployment.fleet,
        deployment.client,
        deployment.observe,
        deployment.redis,
    )
    timers = client.keys.timers
    first = fleet.start_dispatcher()
    fleet.start_worker()
    await client.register_graph(flaky_graph(delay_s=1.0))
    await client.register_graph(timed_wait_graph(timeout_s=1.0))
    flaky = await client.submit("flaky", {}, run_id="flaky-1")
    waiting = await client.submit("timed-wait", {}, run_id="wait-1")

    async def both_scheduled() -> bool:
        flaky_nodes, wait_nodes = await observe.nodes(flaky), await observe.nodes(waiting)
        return (
            await redis.zcard(timers) == 2
            and flaky_nodes["flaky"].status == NodeStatus.RETRY_SCHEDULED
            and wait_nodes["review"].status == NodeStatus.WAITING
        )

    await wait_for(both_scheduled, timeout=15, message="a retry timer and a wait timer")
    assert first.terminate() == 0  # graceful stop: nothing of it is left running
    scores = [score / 1000 for _, score in await redis.zrange(timers, 0, -1, withscores=True)]
    stopped_at, due = time.time(), max(scores)
    print(f"\ndispatcher stopped {min(scores) - stopped_at:.2f}s before the first timer was due")
    assert len(scores) == 2 and min(scores) > stopped_at  # both come due during the downtime
    wait_until_sync(lambda: time.time() > due + 0.5, timeout=5, message="both timers due")

    # Nobody moved the due timers while no dispatcher ran.
    assert await redis.zcard(timers) == 2
    runs = await observe.runs([flaky, waiting])
    assert {r.status.value for r in runs.values() if r is not None} == {"running", "waiting"}

    fleet.start_dispatcher()
    records = await observe.wait_finished([flaky, waiting], timeout=15, guard=fleet.check_alive)
    assert records[flaky].status.value == "completed", records[flaky].error
    assert records[flaky].output == {"node": "flaky", "visit": 1, "attempt": 2}
    assert await observe.started(flaky, "flaky") == 2  # the failed attempt and the retry
    assert records[waiting].status.value == "completed", records[waiting].error
    assert records[waiting].output == {"node": "drop", "visit": 1}
    assert await observe.started(waiting, "drop") == 1
    assert await observe.started(waiting, "ship") == 0
    assert await redis.zcard(timers) == 0

    flaky_types = [e["type"] for e in await observe.history(flaky)]
    assert flaky_types.count("node.retry_scheduled") == 1
    rejected = [e for e in await observe.history(waiting) if e["type"] == "node.rejected"]
    assert len(rejected) == 1 and rejected[0]["data"]["actor"] == "timeout"
    assert fleet.died() == []
