"""``delay`` nodes are durable timers: one survives its dispatcher being SIGKILLed and the
server crashing and coming back from its AOF, and fires exactly once, about on time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from graph_core.model import Graph, Node
from graph_core.status import NodeStatus
from relaygraph.embedded import EmbeddedServer
from tests.faults.conftest import Deployment
from tests.faults.observe import REDIS_DOWN
from tests.support.waiting import wait_for, wait_until_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELAY_S = 2.0
LATE_S = 1.0  # how late past its due time a timer may fire


def delay_graph() -> Graph:
    """start -> nap (delay) -> end: no worker is needed."""
    g = Graph(id="nap").add_nodes(
        Node("start", type="start"),
        Node("nap", type="delay", config={"seconds": DELAY_S}),
        Node("end", type="end"),
    )
    return g.connect("start", "nap", "end").validate_graph()


async def history(dep: Deployment, run_id: str) -> list[dict[str, Any]]:
    return await dep.client.history(run_id)


async def delayed(dep: Deployment, run_id: str) -> float:
    """The due time of the run's delay, once it is scheduled."""

    async def due() -> float | None:
        for e in await history(dep, run_id):
            if e["type"] == "node.delayed":
                return float(e["data"]["due_at"])
        return None

    found: float = await wait_for(due, timeout=15, message=f"{run_id} delayed")
    return found


async def fired_once_on_time(dep: Deployment, run_id: str, due: float) -> None:
    records = await dep.observe.wait_finished([run_id], timeout=20, guard=dep.fleet.check_alive)
    assert records[run_id].status.value == "completed", records[run_id].error
    events = await history(dep, run_id)
    completed = [e for e in events if e["type"] == "node.completed" and e["node_id"] == "nap"]
    assert len(completed) == 1, events  # fired once
    late = completed[0]["at"] - due
    print(f"\n{run_id}: the delay fired {late * 1000:.0f} ms after its due time")
    assert -0.05 <= late <= LATE_S, late
    assert await dep.redis.zcard(dep.client.keys.timers) == 0  # nothing left to fire again


async def test_a_delay_survives_its_dispatcher_being_killed(deployment: Deployment) -> None:
    dep = deployment
    dispatcher = dep.fleet.start_dispatcher()
    await dep.client.register_graph(delay_graph())
    run_id = await dep.client.submit("nap", {"n": 1}, run_id="nap-kill")
    due = await delayed(dep, run_id)
    nodes = await dep.observe.nodes(run_id)
    assert nodes["nap"].status == NodeStatus.DELAYED
    dispatcher.kill()  # SIGKILL while the timer is pending
    dep.fleet.start_dispatcher()
    await fired_once_on_time(dep, run_id, due)


async def test_a_delay_survives_a_redis_aof_restart(
    aof: tuple[EmbeddedServer, Deployment],
) -> None:
    server, dep = aof
    dep.fleet.start_dispatcher()
    await dep.client.register_graph(delay_graph())
    run_id = await dep.client.submit("nap", {}, run_id="nap-aof")
    due = await delayed(dep, run_id)
    server.kill()  # the server crashes with the timer pending...
    server.restart()  # ...and comes back from its AOF before the timer is due
    wait_until_sync(lambda: time.time() < due, timeout=1, message="restarted before due")

    async def timer_kept() -> int:
        return int(await dep.redis.zcard(dep.client.keys.timers))

    assert await wait_for(timer_kept, timeout=10, ignore=REDIS_DOWN) == 1
    await fired_once_on_time(dep, run_id, due)
