"""What one node costs Redis, command by command (``python -m bench.redis_cost [RUNS]``).

Runs RUNS (default 50) 10-node chains through one ``relaygraph dispatcher`` and one worker
process on a throwaway server, with ``MONITOR`` on, and prints:

* Redis commands per node, script-internal calls included, from ``INFO commandstats``, with
  the server's time in each (``usec``: a script's own line includes its inner commands);
* for each script (``apply.lua``, the worker's claim and finish, the reads' script), the
  sequences of commands it ran and how often, which is where a command per node goes;
* the server's CPU and the bytes it read and wrote per node.

A diagnostic for changing the scripts, not a benchmark: ``MONITOR`` slows the server, so the
times are not the figures of ``python -m bench``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import importlib.resources
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import graphs
from bench.procs import (
    Stack,
    cpu_seconds,
    push_inbox,
    start_dispatcher,
    start_server,
    start_workers,
    wait_until,
)
from graph_core.keys import Keys
from graph_core.messages import SubmitRequest, encode_inbox
from worker import limits, preload, waking

PREFIX = "relaygraph"
CHAIN = 10


def _scripts() -> dict[str, str]:
    """sha1 -> a script's name, for the scripts a node runs."""
    apply = importlib.resources.files("dispatcher").joinpath("apply.lua").read_text()
    named = {
        "apply.lua": apply,
        "claim": waking._CLAIM,
        "finish": waking._FINISH,
        "acquire (limits)": limits.ACQUIRE,
        "release (limits)": limits.RELEASE,
        "reads (LATEST_SCRIPT)": preload.LATEST_SCRIPT,
    }
    return {hashlib.sha1(src.encode()).hexdigest(): name for name, src in named.items()}


def _sequences(
    lines: list[dict[str, Any]], names: dict[str, str]
) -> dict[str, collections.Counter[str]]:
    """Each script call's inner commands, as one line per distinct sequence."""
    found: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    current: str | None = None
    inner: list[str] = []

    def close() -> None:
        if current is not None:
            found[current][" ".join(inner)] += 1

    for entry in lines:
        words = str(entry.get("command", "")).split()
        if not words:
            continue
        if entry.get("client_type") == "lua" or entry.get("client_address") == "lua":
            if current is not None:
                inner.append(words[0].upper())
            continue
        close()
        current, inner = None, []
        if words[0].upper() == "EVALSHA" and len(words) > 1:
            current = names.get(words[1].strip('"'), f"script {words[1][:8]}")
    close()
    return found


async def main(runs: int) -> None:
    server = start_server()
    stack = Stack()
    log_dir = Path(tempfile.mkdtemp(prefix="relaygraph-cost-"))
    redis: Any = aioredis.Redis.from_url(server.url)
    monitor: Any = aioredis.Redis.from_url(server.url)
    keys = Keys(PREFIX)
    lines: list[dict[str, Any]] = []
    try:
        await start_dispatcher(stack, server.url, PREFIX, log_dir)
        await start_workers(stack, server.url, PREFIX, 1, 10, log_dir)
        graph = graphs.chain(CHAIN)
        from dispatcher.client import WorkflowClient

        await WorkflowClient(redis, prefix=PREFIX).register_graph(graph)

        async def watch() -> None:
            async with monitor.monitor() as m:
                async for entry in m.listen():
                    lines.append(entry)

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        await redis.config_resetstat()
        pid = int((await redis.info("server"))["process_id"])
        cpu0, stats0 = cpu_seconds(pid), await redis.info("stats")
        requests = [
            SubmitRequest(graph_id=graph.id, graph_version=1, run_id=f"cost-{i}")
            for i in range(runs)
        ]
        await push_inbox(redis, keys.inbox, [encode_inbox(r) for r in requests])

        async def finished() -> bool:
            stack.check()
            return int(await redis.zcard(keys.runs_by_status("completed"))) >= runs

        await wait_until(finished, 120, "the runs")
        cpu, stats1 = cpu_seconds(pid) - cpu0, await redis.info("stats")
        commands = await redis.info("commandstats")
        await asyncio.sleep(0.2)
        watching.cancel()
        nodes = runs * CHAIN
        print(f"{runs} runs of a {CHAIN}-node chain, 1 dispatcher, 1 worker (concurrency 10)\n")
        print("Redis commands per node (script-internal included), server µs in each:")
        rows = sorted(
            (
                (v["calls"] / nodes, v["usec"] / nodes, k.removeprefix("cmdstat_"))
                for k, v in commands.items()
            ),
            reverse=True,
        )
        for calls, usec, name in rows:
            if calls >= 0.01:
                print(f"  {name:22} {calls:6.2f}  {usec:7.1f} µs")
        print(f"  {'total':22} {sum(r[0] for r in rows):6.2f}")
        print(f"\nserver CPU per node (MONITOR on): {cpu * 1e6 / nodes:.0f} µs")
        for stat in ("total_reads_processed", "total_net_input_bytes", "total_net_output_bytes"):
            print(f"{stat} per node: {(stats1[stat] - stats0[stat]) / nodes:.1f}")
        print("\nScript calls, by the commands they ran (most frequent first):")
        for name, counter in sorted(_sequences(lines, _scripts()).items()):
            print(f"  {name}: {sum(counter.values())} calls")
            for sequence, n in counter.most_common(6):
                print(f"    {n:6}  {sequence or '(nothing)'}")
    finally:
        await stack.close()
        await redis.aclose()
        await monitor.aclose()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50))
