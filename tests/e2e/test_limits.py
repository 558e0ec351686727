"""Fleet-wide limits on a deployment (``relaygraph up``: three worker processes, ten jobs at
once each), measured by the handlers themselves: ``max_running`` on a node type is never
exceeded and held-back nodes show ``throttled``; a rate is kept within 20% over 5 s; the
limits change at runtime through ``relaygraph limits``."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest
import redis.asyncio as aioredis

from dispatcher.client import WorkflowClient
from graph_core.limits import LimitError
from graph_core.model import Graph, Node
from tests.e2e.test_examples_cli import RELAYGRAPH, ROOT, cli_env
from tests.e2e.test_run_operations import deployment
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Workers look for limits when they start and then once a second (while none is set, claims
# skip them): a test sets its first limit before its deployment starts, so that every
# claim sees it. Changing a limit that is set applies at the next claim.


def graph(gid: str, sleep: float) -> Graph:
    g = Graph(id=gid).add_nodes(
        Node("start", type="start"),
        Node("job", type="limited", config={"sleep": sleep}),
        Node("end", type="end"),
    )
    return g.connect("start", "job", "end").validate_graph()


async def test_max_running_2_across_three_workers(redis_url: str, redis: aioredis.Redis) -> None:
    prefix = f"lim-{secrets.token_hex(4)}"
    probe = f"{prefix}-probe"
    async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
        limit = await client.set_limit("type:limited", max_running=2)
    assert limit.describe() == "max_running 2"
    with deployment(redis_url, prefix, "--workers", "3", "--concurrency", "10"):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(graph("capped", 0.05))
            runs = [await client.submit("capped", {"i": i}) for i in range(50)]

            async def one_throttled() -> bool:  # the last runs wait longest for a slot
                views = [await client.get_run(r) for r in runs[-10:]]
                return any(v is not None and v.nodes["job"].status == "throttled" for v in views)

            await wait_for(one_throttled, timeout=30, interval=0.02, message="a throttled node")
            for run_id in runs:
                assert (await client.wait(run_id, timeout=60)).status == "completed"
            samples = [int(s) for s in await redis.lrange(f"{probe}:samples", 0, -1)]
            assert len(samples) == 50
            assert max(samples) == 2, samples  # reached, never passed
            shown = await client.limits()
            assert shown["type:limited"]["max_running"] == 2

            # raised at runtime: more run at once, no restart
            await client.set_limit("type:limited", max_running=8)  # at the next claim
            await redis.delete(f"{probe}:samples")
            more = [await client.submit("capped", {"i": i}) for i in range(40)]
            for run_id in more:
                assert (await client.wait(run_id, timeout=60)).status == "completed"
            samples = [int(s) for s in await redis.lrange(f"{probe}:samples", 0, -1)]
            assert 2 < max(samples) <= 8


async def test_a_rate_of_20_per_second_over_5_seconds(
    redis_url: str, redis: aioredis.Redis
) -> None:
    prefix = f"lim-{secrets.token_hex(4)}"
    probe = f"{prefix}-probe"
    async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
        # a bucket of 2: a claim a little late on a busy machine does not lose its token
        await client.set_limit("type:limited", rate="20/s", burst=2)
    with deployment(redis_url, prefix, "--workers", "3", "--concurrency", "10"):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(graph("paced", 0.0))
            runs = [await client.submit("paced", {"i": i}) for i in range(130)]

            async def started(n: int) -> bool:
                return await redis.llen(f"{probe}:starts") >= n

            await wait_for(lambda: started(125), timeout=30, message="125 starts")
            starts = sorted(float(s) for s in await redis.lrange(f"{probe}:starts", 0, -1))
            first = starts[0]
            window = [t for t in starts if first + 0.5 <= t < first + 5.5]
            rate = len(window) / 5.0
            assert 16 <= rate <= 24, f"{rate}/s over 5 s"
            for run_id in runs:
                assert (await client.wait(run_id, timeout=30)).status == "completed"


async def test_limits_through_the_cli(redis_url: str) -> None:
    prefix = f"lim-{secrets.token_hex(4)}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**cli_env(), "RELAYGRAPH_REDIS_URL": redis_url, "RELAYGRAPH_PREFIX": prefix}
        return subprocess.run(
            [RELAYGRAPH, "limits", *args],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = cli("set", "llm", "--max-running", "4", "--rate", "60/min", "--burst", "5")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "queue:llm: max_running 4, rate 1/s (burst 5)"
    shown = cli("show")
    assert "queue:llm: max_running 4, rate 1/s (burst 5); running 0, held back 0" in shown.stdout
    bad = cli("set", "type:x", "--rate", "lots")
    assert bad.returncode == 2 and "N/s, N/min or N/hour" in bad.stderr
    none = cli("set", "type:x")
    assert none.returncode == 2 and "give max_running, a rate" in none.stderr
    cleared = cli("clear", "queue:llm")
    assert cleared.returncode == 0 and "limits removed" in cleared.stdout
    assert cli("show").stdout.strip() == "no limits"
    async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
        with pytest.raises(LimitError, match="max_running must be from 1"):
            await client.set_limit("q", max_running=0)


async def test_a_finishing_job_wakes_the_one_held_back(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """With the workers' fallback poll 30 s away, a job held back by max_running 1 starts
    as soon as the running one ends: its finish wakes it."""
    prefix = f"lim-{secrets.token_hex(4)}"
    slow_poll = {"RELAYGRAPH_WAKE_FALLBACK_S": "30"}
    async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
        await client.set_limit("type:limited", max_running=1)
    with deployment(redis_url, prefix, "--workers", "2", env_extra=slow_poll):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(graph("one-at-a-time", 0.3))
            started = time.monotonic()
            runs = [await client.submit("one-at-a-time", {"i": i}) for i in range(3)]
            for run_id in runs:
                assert (await client.wait(run_id, timeout=20)).status == "completed"
            assert time.monotonic() - started < 10  # not a 30 s fallback poll per job
            samples = [int(s) for s in await redis.lrange(f"{prefix}-probe:samples", 0, -1)]
            assert samples == [1, 1, 1]
