"""``python -m bench.cluster``: relaygraph's throughput on one server, on one server in the
sharded layout, and on a local Redis Cluster of 3 primaries (docs/cluster-plan.md), in the
same run, reported as nodes/s and as ratios to one server.

Each setting runs ``relaygraph up`` (one dispatcher, two worker processes) on its own
server(s) and times ``--runs`` 10-node chains, submitted through the client, from the first
submit to the last completion. On 2 cores the cluster's 3 primaries compete with the
dispatcher and workers for the same cores: this measures the cost of the cluster client
and the layout, not a cluster's scale-out (docs/performance.md has the model for that)."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench import graphs
from dispatcher.client import WorkflowClient
from relaygraph.embedded import EmbeddedServer
from relaygraph.embedded_cluster import EmbeddedCluster

CHAIN = 10
SHARDS = 16


@contextmanager
def _up(url: str, shards: int) -> Iterator[None]:
    env = {**os.environ, "RELAYGRAPH_SHARDS": str(shards)}
    argv = [sys.executable, "-m", "relaygraph", "up", "--redis", url]
    argv += ["--handlers", "bench.handlers", "--workers", "2", "--concurrency", "20"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the banner: serving
            if line.startswith("relaygraph up:"):
                break
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _measure(url: str, shards: int, runs: int) -> float:
    """Nodes per second over ``runs`` chains of ``CHAIN`` nodes."""
    async with WorkflowClient.from_url(url, shards=shards) as client:
        graph = graphs.chain(CHAIN)
        await client.register_graph(graph)
        await client.wait(await client.submit(graph.id, {}), timeout=60)  # warm
        started = time.perf_counter()
        ids = [await client.submit(graph.id, {}) for _ in range(runs)]
        for run_id in ids:
            view = await client.wait(run_id, timeout=300)
            assert view.status == "completed", view
        return runs * CHAIN / (time.perf_counter() - started)


def _settings(runs: int) -> Iterator[tuple[str, float]]:
    with EmbeddedServer() as server, _up(server.url, 0):
        yield "one server", asyncio.run(_measure(server.url, 0, runs))
    with EmbeddedServer() as server, _up(server.url, SHARDS):
        yield f"one server, {SHARDS} shards", asyncio.run(_measure(server.url, SHARDS, runs))
    with EmbeddedCluster(primaries=3) as cluster:
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster.ports)
        with _up(url, SHARDS):
            yield f"cluster, 3 primaries, {SHARDS} shards", asyncio.run(_measure(url, SHARDS, runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--runs", type=int, default=300, help="chains per setting (300)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for name, rate in _settings(args.runs):
        results[name] = rate
        base = results["one server"]
        print(f"{name:<36} {rate:8,.0f} nodes/s  {rate / base:5.2f}x one server", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
