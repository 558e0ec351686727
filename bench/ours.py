"""relaygraph end to end: one ``relaygraph dispatcher`` process and N ``python -m worker``
processes on the benchmark's server. Runs are submitted with the documented raw message
(``XADD <prefix>:inbox * m <SubmitRequest>``), pipelined, so submitting costs the driver
little; completion is read from the run indexes and the run records."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from pathlib import Path
from statistics import median
from typing import Any

import redis.asyncio as aioredis

from bench import graphs
from bench.config import Sizes
from bench.procs import (
    CpuMeter,
    Stack,
    command_stats,
    push_inbox,
    start_dispatcher,
    start_workers,
    used_memory,
    wait_until,
)
from bench.report import cpu_per_node, scale_entry, summarize_ms
from dispatcher.client import WorkflowClient
from graph_core.keys import Keys
from graph_core.messages import SubmitRequest, encode_inbox
from graph_core.model import Graph
from graph_core.state import RunRecord

__all__ = ["Ours"]

PREFIX = "relaygraph"


class Ours:
    """relaygraph's processes for one phase, and the scenarios measured on them."""

    def __init__(
        self, url: str, sizes: Sizes, log_dir: Path, profile_dir: Path | None = None
    ) -> None:
        self.url = url
        self.sizes = sizes
        self.log_dir = log_dir
        self.keys = Keys(PREFIX)
        self.stack = Stack()
        self.redis: Any = aioredis.Redis.from_url(url)
        self.client = WorkflowClient(self.redis, prefix=PREFIX)
        self.dispatcher_pid = 0
        self.worker_pids: list[int] = []
        self.profile_dir = profile_dir
        self.jobs = 0  # worker jobs of every run submitted (per-node profile figures)
        self.transitions = 0  # inbox entries those runs cause (submits and reports)
        self._registered: set[str] = set()
        self._seq = 0
        self._token = secrets.token_hex(3)  # run ids stay unique across phases and rounds

    async def start(self) -> None:
        profile = self.profile_dir
        dispatcher = await start_dispatcher(
            self.stack,
            self.url,
            PREFIX,
            self.log_dir,
            profile=profile / "dispatcher.prof" if profile else None,
        )
        pool = await start_workers(
            self.stack,
            self.url,
            PREFIX,
            self.sizes.workers,
            self.sizes.concurrency,
            self.log_dir,
            profile_dir=profile,
        )
        self.dispatcher_pid = dispatcher.pid
        self.worker_pids = [p.pid for p in pool.procs]

    async def close(self) -> None:
        await self.stack.close()
        await self.redis.aclose()

    # --- helpers ------------------------------------------------------------------------

    async def _register(self, graph: Graph) -> None:
        if graph.id not in self._registered:
            await self.client.register_graph(graph)
            self._registered.add(graph.id)

    def _run_ids(self, tag: str, n: int) -> list[str]:
        self._seq += 1
        return [f"{tag}-{self._token}{self._seq}-{i}" for i in range(n)]

    async def _submit(self, graph: Graph, run_ids: list[str]) -> None:
        self.jobs += graphs.jobs_of(graph) * len(run_ids)
        self.transitions += (graphs.jobs_of(graph) + 1) * len(run_ids)
        requests = [SubmitRequest(graph_id=graph.id, graph_version=1, run_id=r) for r in run_ids]
        await push_inbox(self.redis, self.keys.inbox, [encode_inbox(r) for r in requests])

    async def _count(self, status: str) -> int:
        return int(await self.redis.zcard(self.keys.runs_by_status(status)))

    async def _wait_finished(self, target: int, baseline: int, what: str) -> None:
        failed_before = await self._count("failed")

        async def done() -> bool:
            self.stack.check()
            if await self._count("failed") > failed_before:
                raise RuntimeError(f"{what}: a run failed (see the dispatcher/worker logs)")
            return await self._count("completed") - baseline >= target

        await wait_until(done, self.sizes.timeout_s, what)

    async def _record(self, run_id: str) -> RunRecord:
        raw = await self.redis.hget(self.keys.run(run_id).meta, "run")
        return RunRecord.model_validate_json(raw)

    async def run_once(self, graph: Graph) -> float:
        """Submit one run and wait for it; seconds from submit to its finish."""
        await self._register(graph)
        (run_id,) = self._run_ids("one", 1)
        baseline = await self._count("completed")
        started = time.time()
        await self._submit(graph, [run_id])
        await self._wait_finished(1, baseline, f"run of {graph.id}")
        record = await self._record(run_id)
        finished = record.finished_at or record.updated_at
        return finished - started

    # --- scenarios ----------------------------------------------------------------------

    async def hop(self) -> dict[str, Any]:
        """A chain's consecutive handler starts; split at the moment the dispatcher picked
        up each report (the ``node.completed`` history event)."""
        n = self.sizes.hop_chain
        graph = graphs.chain(n)
        await self._register(graph)
        (run_id,) = self._run_ids("hop", 1)
        baseline = await self._count("completed")
        await self._submit(graph, [run_id])
        await self._wait_finished(1, baseline, "hop chain")
        outputs = await self.client.store.outputs_of(run_id, {f"n{i}": 1 for i in range(n)})
        starts = [float(outputs[f"n{i}"]["t"]) for i in range(n)]
        picked: dict[str, float] = {}
        for event in await self.client.store.history(run_id):
            if event.get("type") == "node.completed" and event.get("node_id"):
                picked[event["node_id"]] = float(event["at"])
        hops = [b - a for a, b in itertools.pairwise(starts)]
        to_dispatcher = [picked[f"n{i}"] - starts[i] for i in range(n - 1)]
        to_next = [starts[i + 1] - picked[f"n{i}"] for i in range(n - 1)]
        result = summarize_ms(hops)
        result["segments"] = {
            "handler start -> dispatcher picks up the report": summarize_ms(to_dispatcher),
            "dispatcher picks up -> next handler starts": summarize_ms(to_next),
        }
        return result

    async def throughput_and_memory(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """R 10-node chains submitted at once; nodes per second, CPU per node of every
        process, and the server's memory per finished run."""
        runs = self.sizes.throughput_runs
        graph = graphs.chain(10)
        await self._register(graph)
        run_ids = self._run_ids("tp", runs)
        baseline = await self._count("completed")
        memory_before = await used_memory(self.redis)
        inbox_before = await self._inbox_bytes()
        meter = CpuMeter(
            {
                "server": [await self._server_pid()],
                "dispatcher": [self.dispatcher_pid],
                "workers": self.worker_pids,
            }
        )
        await self.redis.config_resetstat()
        meter.start()
        await self._submit(graph, run_ids)
        await self._wait_finished(runs, baseline, "throughput runs")
        cpu, wall = meter.stop()
        commands = await command_stats(self.redis)
        memory_after = await used_memory(self.redis)
        inbox_after = await self._inbox_bytes()
        nodes = runs * 10
        throughput = {
            "runs": runs,
            "nodes": nodes,
            "wall_s": wall,
            "per_s": nodes / wall,
            "cpu_us_per_node": cpu_per_node(cpu, nodes),
            "commands_per_node": {k: v / nodes for k, v in commands.items()},
        }
        delta = memory_after - memory_before
        memory = {
            "runs": runs,
            "bytes_per_run": delta / runs,
            "bytes_per_run_without_inbox": (delta - (inbox_after - inbox_before)) / runs,
            "inbox_bytes_per_run": (inbox_after - inbox_before) / runs,
            "keys_of_one_run": await self._key_sizes(run_ids[0]),
        }
        return throughput, memory

    async def _inbox_bytes(self) -> int:
        return int(await self.redis.memory_usage(self.keys.inbox, samples=0) or 0)

    async def _key_sizes(self, run_id: str) -> dict[str, int]:
        rk = self.keys.run(run_id)
        names = ("meta", "nodes", "outputs", "joins", "loops", "active", "events", "waits")
        sizes = {}
        for name, key in zip(names, rk.all(), strict=True):
            size = await self.redis.memory_usage(key, samples=0)
            if size:
                sizes[name] = int(size)
        return sizes

    async def _server_pid(self) -> int:
        info = await self.redis.info("server")
        return int(info["process_id"])

    async def scaling(self) -> dict[str, Any]:
        """Per-node cost (wall time of one run / its jobs) of each shape, small and large."""
        small, large = self.sizes.scale_small, self.sizes.scale_large
        builders = {"chain": graphs.chain, "fanout": graphs.fanout, "loop": graphs.loop}
        result: dict[str, Any] = {}
        for shape, build in builders.items():
            small_graph, large_graph = build(small), build(large)
            await self.run_once(small_graph)  # warm: graph caches, first-run costs
            await self.run_once(large_graph)
            # The small runs go on either side of the large one: the machine's speed drifts.
            half = max(1, self.sizes.scale_repeats // 2)
            smalls = [await self.run_once(small_graph) for _ in range(half)]
            big = await self.run_once(large_graph)
            smalls += [await self.run_once(small_graph) for _ in range(half)]
            result[shape] = scale_entry(
                small,
                large,
                median(smalls) / graphs.jobs_of(small_graph),
                big / graphs.jobs_of(large_graph),
            )
        return result

    async def concurrent(self) -> dict[str, Any]:
        """Many one-job runs submitted at once; all must complete."""
        runs = self.sizes.concurrent_runs
        graph = graphs.single()
        await self._register(graph)
        run_ids = self._run_ids("many", runs)
        baseline = await self._count("completed")
        started = time.monotonic()
        await self._submit(graph, run_ids)
        submitted = time.monotonic() - started
        with contextlib.suppress(TimeoutError):  # reported as fewer completed runs
            await self._wait_finished(runs, baseline, "concurrent runs")
        wall = time.monotonic() - started
        completed = await self._count("completed") - baseline
        return {
            "runs": runs,
            "completed": completed,
            "wall_s": wall,
            "submit_s": submitted,
            "runs_per_s": completed / wall,
        }

    async def idle_cpu(self, seconds: float) -> dict[str, dict[str, float]]:
        meter = CpuMeter(
            {"dispatcher": [self.dispatcher_pid], **{str(p): [p] for p in self.worker_pids}}
        )
        meter.start()
        await asyncio.sleep(seconds)
        cpu, wall = meter.stop()
        workers = [cpu[str(p)] for p in self.worker_pids]
        return {
            "ours-worker": {"cpu_pct": 100 * max(workers) / wall, "processes": len(workers)},
            "ours-dispatcher": {"cpu_pct": 100 * cpu["dispatcher"] / wall},
        }
