"""Many concurrent runs through separate dispatcher and worker processes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.faults.conftest import Deployment
from tests.faults.graphs import BUSY_EXECUTIONS, busy_graph, expected_output

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = 200


async def test_many_runs_two_dispatchers_three_workers(
    deployment: Deployment, measurements: dict[str, Any]
) -> None:
    fleet, client, observe = deployment.fleet, deployment.client, deployment.observe
    dispatchers = [fleet.start_dispatcher(wait=False) for _ in range(2)]
    workers = [fleet.start_worker(wait=False, concurrency=10) for _ in range(3)]
    for d in dispatchers:
        d.wait_ready()
    for w in workers:
        w.wait_ready()
    await client.register_graph(busy_graph())

    started = time.monotonic()
    inputs = {f"busy-{i}": {"n": 150 if i % 2 else 5} for i in range(RUNS)}
    await asyncio.gather(
        *(client.submit("busy", data, run_id=run_id) for run_id, data in inputs.items())
    )
    records = await observe.wait_finished(inputs, timeout=120, guard=fleet.check_alive)
    elapsed = time.monotonic() - started

    for run_id, data in inputs.items():
        record = records[run_id]
        assert record.status.value == "completed", (run_id, record.error)
        assert record.output == expected_output(data["n"]), run_id
    counts = await observe.started_counts()
    per_run: dict[str, int] = {}
    for key in counts:
        run_id = key.split(":", 1)[0]
        per_run[run_id] = per_run.get(run_id, 0) + 1
    total, most = sum(counts.values()), max(counts.values())
    print(
        f"\nmany runs: {RUNS} runs, {total} executions, {len(counts)} (run, node, visit) "
        f"keys, max executions per key {most}, {elapsed:.2f}s ({RUNS / elapsed:.1f} runs/s)"
    )
    measurements["many_runs"] = {
        "runs": RUNS,
        "executions": total,
        "max_per_visit": most,
        "seconds": round(elapsed, 3),
    }
    duplicated = sorted(k for k, n in counts.items() if n > 1)
    assert not duplicated, f"{len(duplicated)} (run, node, visit) ran twice: {duplicated[:10]}"
    assert per_run == dict.fromkeys(inputs, BUSY_EXECUTIONS)
    assert total == RUNS * BUSY_EXECUTIONS
    assert await observe.pending() == 0
    assert not fleet.died(), fleet.died()
