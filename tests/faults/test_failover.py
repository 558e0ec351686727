"""A primary with a replica is SIGKILLed while runs are in flight, the replica is promoted
and the clients' address now leads to it (a proxy stands for Sentinel or a cloud endpoint):
docs/architecture.md, "Failover". The dispatcher and workers go on by themselves; a submit
the replica never received is found missing and submitted again with the same run id, as
the docs tell clients to do; every run completes, and each node completes once per run
(handlers may run again: at-least-once)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from tests.faults.conftest import Deployment, failed, new_prefix
from tests.faults.graphs import CHAIN_NODES, chain_graph, expected_output
from tests.faults.observe import REDIS_DOWN
from tests.support.servers import ServerFactory
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_for, wait_until_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = 60


@pytest.fixture
def pair(server_factory: ServerFactory) -> Iterator[tuple[Any, Any, TcpProxy]]:
    """A primary, its replica (linked), and a proxy in front of the primary."""
    primary = server_factory()
    replica = server_factory(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    admin = sync_redis.Redis(port=replica.port)

    def linked() -> bool:
        return admin.info("replication").get("master_link_status") == "up"

    wait_until_sync(linked, timeout=10, message="the replica to link to its primary")
    with TcpProxy(primary.port) as proxy:
        yield primary, replica, proxy
    admin.close()


@pytest.fixture
async def failover(
    request: pytest.FixtureRequest, pair: tuple[Any, Any, TcpProxy], tmp_path: Path
) -> AsyncIterator[tuple[Any, Any, TcpProxy, Deployment]]:
    primary, replica, proxy = pair
    dep = Deployment(proxy.url, new_prefix("failover"), tmp_path / "logs")
    try:
        yield primary, replica, proxy, dep
    finally:
        dep.fleet.stop_all()
        if failed(request):
            dep.fleet.dump_logs()
        await dep.aclose()


async def test_a_failover_to_the_replica_loses_no_run_and_doubles_no_state_change(
    failover: tuple[Any, Any, TcpProxy, Deployment], measurements: dict[str, Any]
) -> None:
    primary, replica, proxy, dep = failover
    fleet, client, observe = dep.fleet, dep.client, dep.observe
    dispatcher = fleet.start_dispatcher(wait=False, claim_idle_s=1)
    workers = [fleet.start_worker(wait=False) for _ in range(2)]
    for proc in (dispatcher, *workers):
        await proc.ready()
    await client.register_graph(chain_graph())
    runs = {f"failover-{i}": {"n": 150 if i % 2 else 5} for i in range(RUNS)}
    early = dict(list(runs.items())[: RUNS // 2])
    await asyncio.gather(
        *(client.submit("chain", data, run_id=run_id) for run_id, data in early.items())
    )

    async def finished(count: int) -> bool:
        return await observe.finished_count(runs) >= count

    await wait_for(lambda: finished(RUNS // 8), timeout=30, message="some runs to finish")
    # The replica stops following (a failover to a lagging replica): what the old primary
    # acknowledges from now on is lost with it, submits included.
    promoted = sync_redis.Redis(port=replica.port)
    promoted.execute_command("REPLICAOF", "NO", "ONE")
    promoted.close()
    late = {r: data for r, data in runs.items() if r not in early}
    await asyncio.gather(
        *(client.submit("chain", data, run_id=run_id) for run_id, data in late.items())
    )
    at_split = await observe.finished_count(runs)
    await wait_for(lambda: finished(at_split + 5), timeout=30, message="work after the split")
    primary.kill()
    killed_at = time.monotonic()
    proxy.switch(replica.port)

    # A client checks what it submitted: a run the replica never saw is submitted again.
    async def missing() -> list[list[str]]:
        found = await observe.runs(runs)
        return [[r for r, rec in found.items() if rec is None]]

    [lost] = await wait_for(missing, timeout=10, ignore=REDIS_DOWN)
    assert set(lost) == set(late)  # submitted after the split: none reached the replica
    for run_id in lost:
        await client.submit("chain", runs[run_id], run_id=run_id)

    records = await observe.wait_finished(runs, timeout=60, guard=fleet.check_alive)
    recovered = time.monotonic() - killed_at
    for run_id, data in runs.items():
        assert records[run_id].status.value == "completed", (run_id, records[run_id].error)
        assert records[run_id].output == expected_output(data["n"]), run_id
    for run_id in runs:  # each node completed once: no state change was applied twice
        completed = Counter(
            e["node_id"] for e in await observe.history(run_id) if e["type"] == "node.completed"
        )
        branch = "big" if runs[run_id]["n"] >= 100 else "small"
        assert completed == Counter(
            {"start": 1, **dict.fromkeys(CHAIN_NODES, 1), branch: 1, "end": 1}
        ), (run_id, completed)
    counts = await observe.started_counts()
    again = sorted(k for k, n in counts.items() if n > 1)  # at-least-once: say how often
    print(
        f"\nfailover: {len(lost)} submits lost and sent again; all {RUNS} runs done "
        f"{recovered:.2f}s after the kill; {len(again)} visits ran more than once"
    )
    measurements["failover"] = {
        "recovered_s": round(recovered, 3),
        "submits_lost": len(lost),
        "visits_run_twice": len(again),
    }
    fleet.check_alive()
