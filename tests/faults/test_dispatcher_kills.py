"""A dispatcher SIGKILLed at random moments while runs are in flight: the other one and a
replacement (reclaiming the dead one's pending inbox entries) finish every run, once.

Two dispatchers and two workers serve the whole module (starting processes per repetition
would cost more than the repetition); each repetition uses its own run ids and reads only
its own marks.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.client import WorkflowClient
from tests.faults.conftest import Deployment, failed
from tests.faults.graphs import CHAIN_NODES, chain_graph, expected_output
from tests.faults.procs import Fleet
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = 100
REPETITIONS = 20
CLAIM_IDLE_S = 1  # a dead dispatcher's pending entries are reclaimed after 1 s


@pytest.fixture(scope="module")
async def shared(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    """Two dispatchers and two workers on a prefix of their own, for every repetition."""
    log_dir: Path = tmp_path_factory.mktemp("dispatcher-kills") / "logs"
    dep = Deployment(redis_url, f"faults-kills-{secrets.token_hex(3)}", log_dir)
    fleet = dep.fleet
    try:
        procs = [fleet.start_dispatcher(wait=False, claim_idle_s=CLAIM_IDLE_S) for _ in range(2)]
        procs += [fleet.start_worker(wait=False) for _ in range(2)]
        for proc in procs:
            proc.wait_ready()
        await dep.client.register_graph(chain_graph())
        yield dep
    finally:
        fleet.stop_all()
        await dep.aclose()


@pytest.fixture
def fleet(request: pytest.FixtureRequest, shared: Deployment) -> Iterator[Fleet]:
    yield shared.fleet
    if failed(request):
        shared.fleet.dump_logs()


async def _submit_all(client: WorkflowClient, runs: dict[str, dict[str, Any]]) -> None:
    await asyncio.gather(
        *(client.submit("chain", data, run_id=run_id) for run_id, data in runs.items())
    )


async def _pending_of(dep: Deployment, pid: int) -> int:
    """Inbox entries the dispatcher process ``pid`` read and did not acknowledge."""
    keys = dep.client.keys
    consumers = await dep.redis.xinfo_consumers(keys.inbox, keys.inbox_group)
    # consumer names are "<host>-<pid>-<random>" (dispatcher.service)
    return sum(int(c["pending"]) for c in consumers if f"-{pid}-" in c["name"].decode())


@pytest.mark.parametrize("seed", range(REPETITIONS))
async def test_dispatcher_killed_at_random_moments(
    seed: int, shared: Deployment, fleet: Fleet, measurements: dict[str, Any]
) -> None:
    client, observe = shared.client, shared.observe
    rng = random.Random(seed)
    tag = f"k{seed}-{secrets.token_hex(2)}"
    runs = {f"{tag}-{i}": {"n": rng.choice([5, 150])} for i in range(RUNS)}
    # The kill lands once this many runs have finished: 0 is during the submissions.
    kill_when_finished = rng.randrange(0, RUNS * 3 // 4)
    live = fleet.dispatchers()
    assert len(live) == 2, fleet.procs
    victim = rng.choice(live)

    async def kill_time() -> bool:
        return await observe.finished_count(runs.keys()) >= kill_when_finished

    async def drained() -> bool:
        return await observe.pending() == 0

    started = time.monotonic()
    submitting = asyncio.create_task(_submit_all(client, runs))
    try:
        await wait_for(
            kill_time,
            timeout=30,
            interval=0.02,
            message=lambda: f"{kill_when_finished} runs to finish before the kill",
        )
        victim.kill()
        killed_at = time.monotonic() - started
        finished_at_kill = await observe.finished_count(runs.keys())
        orphaned = await _pending_of(shared, victim.pid)
        replacement = fleet.start_dispatcher(wait=False, claim_idle_s=CLAIM_IDLE_S)
    finally:
        await submitting
    await replacement.ready()
    records = await observe.wait_finished(runs.keys(), timeout=30, guard=fleet.check_alive)
    await wait_for(
        drained,
        timeout=15,
        message="the killed dispatcher's pending entries to be reclaimed",
    )
    elapsed = time.monotonic() - started

    for run_id, data in runs.items():
        assert records[run_id].status.value == "completed", (run_id, records[run_id].error)
        assert records[run_id].output == expected_output(data["n"]), run_id
    counts = {k: n for k, n in (await observe.started_counts()).items() if k.startswith(tag)}
    duplicated = sorted(k for k, n in counts.items() if n > 1)
    assert not duplicated, f"ran more than once: {duplicated[:10]}"
    assert len(counts) == RUNS * (len(CHAIN_NODES) + 1)  # a, b, c and big|small, once each
    assert fleet.died() == []
    print(
        f"\nseed {seed}: killed {victim.name} at {killed_at:.2f}s with "
        f"{finished_at_kill}/{RUNS} runs finished, {orphaned} inbox entries left pending by "
        f"it; all done in {elapsed:.2f}s, "
        f"{sum(counts.values())} executions, max {max(counts.values())} per visit"
    )
    measurements.setdefault("dispatcher_kills", {})[seed] = {
        "killed_at_s": round(killed_at, 3),
        "finished_at_kill": finished_at_kill,
        "orphaned_entries": orphaned,
        "seconds": round(elapsed, 3),
        "max_per_visit": max(counts.values()),
    }
