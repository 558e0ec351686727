"""Workers that die or misbehave: a SIGKILLed worker's node runs elsewhere, and a handler
that blocks the event loop neither runs twice nor escapes its timeout."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.conftest import Deployment
from tests.faults.graphs import blocking_graph, slow_graph
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DETECTION_LIMIT_S = 10.0


async def test_worker_killed_mid_node_is_rerun_elsewhere(
    deployment: Deployment, measurements: dict[str, Any]
) -> None:
    fleet, client, observe = deployment.fleet, deployment.client, deployment.observe
    fleet.start_dispatcher()
    workers = {w.pid: w for w in (fleet.start_worker(), fleet.start_worker())}
    await client.register_graph(slow_graph(sleep_s=3.0))
    run_id = await client.submit("slow", {}, run_id="victim")

    await wait_for(lambda: observe.started(run_id, "slow"), timeout=15, message="slow to start")
    [first] = await observe.starts(run_id, "slow")
    assert first.pid in workers, (first, workers)
    victim = workers.pop(first.pid)
    [survivor] = workers.values()
    killed_at = time.time()
    victim.kill()

    async def second_start() -> bool:
        return await observe.started(run_id, "slow") >= 2

    await wait_for(second_start, timeout=20, message="slow to start again on another worker")
    record = (await observe.wait_finished([run_id], 20, deployment.fleet.check_alive))[run_id]
    starts = await observe.starts(run_id, "slow")
    detection = starts[1].at - killed_at
    print(f"\nworker-death detection: {detection:.2f}s (kill -> second start)")
    measurements["worker_death_detection_s"] = round(detection, 3)

    assert record.status.value == "completed", record.error
    assert record.output == {"node": "after", "visit": 1}
    assert [s.pid for s in starts] == [victim.pid, survivor.pid]
    assert [s.attempt for s in starts] == [1, 2]  # the lost attempt was replaced, not retried
    assert detection < DETECTION_LIMIT_S
    assert await observe.started(run_id, "before") == 1
    assert await observe.started(run_id, "after") == 1
    assert await observe.finished(run_id, "slow") == 1  # the killed attempt never finished
    history = await observe.history(run_id)
    lost = [e for e in history if e["type"] == "node.lost"]
    assert [(e["node_id"], e["attempt"]) for e in lost] == [("slow", 1)]
    assert [e["type"] for e in history].count("run.completed") == 1
    assert fleet.died() == []


async def _blocking_run(
    deployment: Deployment, graph_id: str, block_s: float, timeout_s: float
) -> tuple[str, float]:
    """Two workers with short leases; a run whose node blocks its worker's loop. Returns the
    run id and when the handler started (its own record)."""
    fleet, client, observe = deployment.fleet, deployment.client, deployment.observe
    fleet.start_dispatcher()
    for _ in range(2):  # a second worker, idle: it would take over a lapsed lease at once
        fleet.start_worker(lease_s=1.5, heartbeat_s=0.5)
    await client.register_graph(blocking_graph(graph_id, block_s=block_s, timeout_s=timeout_s))
    run_id = await client.submit(graph_id, {}, run_id=f"{graph_id}-1")
    await wait_for(lambda: observe.started(run_id, "block"), timeout=15, message="block starts")
    [first] = await observe.starts(run_id, "block")
    return run_id, first.at


async def test_blocking_handler_is_not_duplicated_and_still_times_out(
    deployment: Deployment, measurements: dict[str, Any]
) -> None:
    observe = deployment.observe
    run_id, began = await _blocking_run(deployment, "overrun", block_s=6.0, timeout_s=2.5)

    # The handler holds its worker's loop for 6 s; the heartbeat thread renews the lease
    # until the 2.5 s deadline and then lets it lapse, so the dispatcher fails the attempt.
    record = (await observe.wait_finished([run_id], 10, deployment.fleet.check_alive))[run_id]
    failed_after = (record.finished_at or 0) - began
    handler_done = await observe.finished(run_id, "block")
    print(f"\nblocking handler failed by its timeout {failed_after:.2f}s after it started")
    measurements["blocking_timeout_failure_s"] = round(failed_after, 3)
    assert record.status.value == "failed"
    assert record.error is not None
    assert record.error.type == "TimeoutError" and record.error.node_id == "block"
    assert "timeout" in record.error.message
    # The deadline counts from when the worker took the job, a moment before the handler's
    # own record: not before ~2.5 s, and long before the 6 s the handler takes.
    assert 2.0 <= failed_after < 5.0
    assert handler_done == 0, "the run failed only once the handler returned"
    assert await observe.started(run_id, "block") == 1  # no second attempt while it beat

    # When the handler finally returns, its late report changes nothing.
    await wait_for(
        lambda: observe.finished(run_id, "block"), timeout=10, message="the handler to return"
    )
    history = await observe.history(run_id)
    types = [e["type"] for e in history]
    assert types.count("run.failed") == 1 and "node.lost" not in types
    assert "run.completed" not in types
    assert await observe.started(run_id, "block") == 1
    assert await observe.started(run_id, "after") == 0
    after = await observe.run(run_id)
    assert after is not None and after.status.value == "failed"
    assert deployment.fleet.died() == []


async def test_blocking_handler_within_its_timeout_runs_once(deployment: Deployment) -> None:
    observe = deployment.observe
    run_id, _ = await _blocking_run(deployment, "blocker", block_s=4.0, timeout_s=10.0)

    record = (await observe.wait_finished([run_id], 20, deployment.fleet.check_alive))[run_id]
    assert record.status.value == "completed", record.error
    assert record.output == {"node": "after", "visit": 1}
    # 4 s on a blocked loop is well past the 1.5 s lease: only the heartbeat thread kept it.
    assert await observe.started(run_id, "block") == 1
    assert await observe.finished(run_id, "block") == 1
    types = [e["type"] for e in await observe.history(run_id)]
    assert "node.lost" not in types and "node.retry_scheduled" not in types
    assert deployment.fleet.died() == []
