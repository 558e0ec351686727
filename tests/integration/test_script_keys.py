"""Every key a Lua script touches is one it declares in ``KEYS``, as Redis Cluster requires
(docs/cluster-plan.md, step 1 of the port). A workload with a map, child runs, approvals, a
fleet-wide limit and a cancellation runs under ``MONITOR``; each script's inner commands
are checked against the keys its call declared.

No script declares a placeholder (``''``) or a string that is no key, and none touches a
key it did not declare: the fleet-wide limits are taken by scripts of their own
(worker/limits.py), on the limits' keys only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dispatcher.client import WorkflowClient
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.model import Graph, Node
from graph_core.status import RunStatus
from tests.support.dispatching import serving
from tests.support.keyaudit import KeyAudit, script_names
from tests.support.servers import ServerFactory
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


async def _workload(url: str, shards: int = 0) -> None:
    """A map, child runs, approvals, a limit and a cancellation, in the key layout of
    ``shards`` (0: one server's)."""
    async with WorkflowClient.from_url(url, shards=shards) as client:
        await client.set_limit("queue:default", max_running=2)  # the claim's limits path
    argv = [
        *("run", "examples/batch_triage/graph.json", "--graph", "examples/batch_triage/issue.json"),
        *("--handlers", "examples.batch_triage.handlers", "--approve", "review"),
        *("--input", '{"count": 6}', "--redis", url),
    ]
    env = {**os.environ, "RELAYGRAPH_SHARDS": str(shards)}
    done = subprocess.run(
        [sys.executable, "-m", "relaygraph", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    # a run cancelled while its job waits in a queue no worker serves: apply.lua aborts it
    graph = Graph(id="parked").add_nodes(
        Node("start", type="start"),
        Node("job", type="noop", queue="nobody"),
        Node("end", type="end"),
    )
    graph.connect("start", "job", "end").validate_graph()
    async with WorkflowClient.from_url(url, shards=shards) as client:
        settings = DispatcherSettings(redis_url=url, shards=shards)
        dispatcher = Dispatcher(client.redis, settings)
        async with serving(dispatcher):
            await client.register_graph(graph)
            run_id = await client.submit("parked", {}, idempotency_key="parked-1")

            async def queued() -> bool:
                view = await client.get_run(run_id)
                return view is not None and view.nodes["job"].status == "queued"

            await wait_for(queued, message="the parked job queued")
            await client.cancel(run_id)
            assert (await client.wait(run_id, timeout=30)).status == RunStatus.CANCELLED


async def test_scripts_touch_only_the_keys_they_declare(server_factory: ServerFactory) -> None:
    server = server_factory()
    audit = KeyAudit(server.url)
    await audit.start()
    await _workload(server.url)
    await audit.stop()

    names = script_names()
    ran = {
        (names.get(call.sha), command[0].upper()) for call in audit.calls for command in call.inner
    }
    # the workload reached what apply.lua writes outside the run's own keys
    for command in (b"SET", b"ZADD", b"RPUSH", b"XADD", b"XACK", b"EXPIRE"):
        assert ("apply.lua", command) in ran, command
    assert ("claim", b"SET") in ran and ("finish", b"DEL") in ran
    assert ("acquire", b"ZADD") in ran and ("release", b"ZREM") in ran  # the limit's path
    assert await audit.undeclared(names) == {}


async def test_sharded_no_script_or_command_spans_two_slots(server_factory: ServerFactory) -> None:
    """The same workload in the sharded layout (4 shards, on one server, which does not
    check slots): every script's keys, and every multi-key command's, share one cluster
    slot, as a Redis Cluster requires. The scripts still touch only what they declare."""
    server = server_factory()
    audit = KeyAudit(server.url)
    await audit.start()
    await _workload(server.url, shards=4)
    await audit.stop()
    names = script_names()
    ran = {names.get(call.sha) for call in audit.calls}
    assert {"apply.lua", "claim", "finish", "acquire", "release", "submit"} <= ran, ran
    assert await audit.undeclared(names) == {}
    assert await audit.cross_slot(names) == {}
