"""``map`` nodes: what an item costs in one large map against many 10-item maps, and the Redis
memory an item takes. One ``relaygraph dispatcher`` process and ``workers`` worker processes
(``bench.handlers``), a prefix of its own. The graph (``graphs.map_items``): start -> make
(returns ``list(range(input.n))``) -> each (a map running a no-op ``tick`` per item,
``map_max_concurrency`` at a time) -> end.

- cost: ``map_small_runs`` runs of a ``map_small_items``-item map (half of them submitted at
  once before the large map, half after: the machine's speed drifts) against one run of a
  ``map_large_items``-item map. Per item: the CPU of the server, the dispatcher and the
  workers (``/proc``, the server's pid from ``INFO``) and the server's commands (``INFO
  commandstats``, script-internal calls included), from the submits to the last run's
  completion. A run's own cost (its submit, ``make``, ``end``) is in both, spread over its
  items; runs of start -> make -> end (no map) measure it, so it can be taken out.
- memory: one more run of the large map on its own. ``MEMORY USAGE`` of the run's keys
  (outputs hash, history stream, node records, run record) and the inbox's growth: as the
  map starts (the first time its node record reads ``running``: its item inputs were
  written by that same apply), at their peak (polled) and once the run finished; the
  server's ``used_memory`` (allocated less client buffers and script caches) against before
  the submit at the same moments, which swings by a few hundred KB on its own.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from dispatcher.client import WorkflowClient
from graph_core.keys import Keys
from graph_core.messages import SubmitRequest, encode_inbox
from graph_core.model import Graph
from graph_core.state import NodeRecord
from graph_core.status import NodeStatus

__all__ = ["GROUPS", "MapBench", "Pass", "case", "measure", "without_runs"]

PREFIX = "bench-map"  # a prefix of its own: the other phases' run counts stay apart
POLL_S = 0.02  # the cost passes: how often the driver looks (2 ZCARDs a look)
START_POLL_S = 0.005  # the memory pass: how often it looks for the map's start ...
MEMORY_POLL_S = 0.05  # ... and then reads the keys' sizes (O(fields) each) and the memory
GROUPS = ("server", "dispatcher", "workers")  # the processes whose CPU is an item's cost
TOP_COMMANDS = 12  # commands per item kept in the results, the most called first


@dataclass
class Pass:
    """Runs of one graph, measured together: CPU seconds per process group, calls per
    command, wall seconds. Passes of the same case add up."""

    runs: int = 0
    items: int = 0
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    net_bytes: dict[str, int] = field(default_factory=dict)  # the server's "in" and "out"

    def __add__(self, other: Pass) -> Pass:
        def add(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}

        return Pass(
            self.runs + other.runs,
            self.items + other.items,
            self.wall_s + other.wall_s,
            add(self.cpu_s, other.cpu_s),
            add(self.commands, other.commands),
            add(self.net_bytes, other.net_bytes),
        )

    @property
    def cpu_total_s(self) -> float:
        """Server + dispatcher + workers (not the driver)."""
        return sum(self.cpu_s.get(g, 0.0) for g in GROUPS)

    @property
    def command_total(self) -> int:
        return sum(self.commands.values())


def without_runs(p: Pass, base: Pass) -> tuple[float, float]:
    """``p``'s CPU seconds (server + dispatcher + workers) and commands less what its runs
    would cost without their maps, at ``base``'s cost per run (runs of start -> make ->
    end); never below zero."""
    if base.runs < 1:
        raise ValueError("the runs without a map: none measured")
    cpu = p.cpu_total_s - p.runs * base.cpu_total_s / base.runs
    commands = p.command_total - p.runs * base.command_total / base.runs
    return max(cpu, 0.0), max(commands, 0.0)


def case(p: Pass, base: Pass | None = None) -> dict[str, Any]:
    """The figures of one case: items/s, CPU µs and server commands per item; with
    ``base``, also per item of the map alone (its runs' own cost taken out)."""
    if p.items < 1 or p.wall_s <= 0:
        raise ValueError(f"a pass with {p.items} items in {p.wall_s} s has no per-item figure")
    cpu = {g: p.cpu_s.get(g, 0.0) * 1e6 / p.items for g in GROUPS}
    cpu["total"] = sum(cpu.values())
    ranked = sorted(p.commands.items(), key=lambda kv: -kv[1])[:TOP_COMMANDS]
    out: dict[str, Any] = {
        "runs": p.runs,
        "items": p.items,
        "items_per_run": p.items / p.runs if p.runs else None,
        "wall_s": p.wall_s,
        "items_per_s": p.items / p.wall_s,
        "cpu_us_per_item": cpu,
        "driver_cpu_us_per_item": p.cpu_s.get("driver", 0.0) * 1e6 / p.items,
        "commands_per_item": p.command_total / p.items,
        "net_bytes_per_item": {k: v / p.items for k, v in sorted(p.net_bytes.items())},
        "top_commands_per_item": {k: v / p.items for k, v in ranked},
    }
    if base is not None:
        map_cpu, map_commands = without_runs(p, base)
        out["map_only"] = {
            "cpu_us_per_item": map_cpu * 1e6 / p.items,
            "commands_per_item": map_commands / p.items,
        }
    return out


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return None
    return float(a) / float(b)


class MapBench:
    """One dispatcher and the workers on their own prefix, and the measurements on them."""

    def __init__(self, url: str, sizes: Sizes, log_dir: Path) -> None:
        self.url = url
        self.sizes = sizes
        self.log_dir = log_dir
        self.keys = Keys(PREFIX)
        self.graph = graphs.map_items(sizes.map_max_concurrency)
        self.base_graph = graphs.make_only()
        self.stack = Stack()
        self.client = WorkflowClient.from_url(url, prefix=PREFIX)
        self.redis: Any = self.client.redis
        self.groups: dict[str, list[int]] = {}
        self._seq = 0
        self._token = secrets.token_hex(3)  # run ids stay unique across phases

    async def start(self) -> None:
        await self.client.register_graph(self.graph)
        await self.client.register_graph(self.base_graph)
        dispatcher = await start_dispatcher(self.stack, self.url, PREFIX, self.log_dir)
        pool = await start_workers(
            self.stack, self.url, PREFIX, self.sizes.workers, self.sizes.concurrency, self.log_dir
        )
        server = int((await self.redis.info("server"))["process_id"])
        self.groups = {
            "server": [server],
            "dispatcher": [dispatcher.pid],
            "workers": [p.pid for p in pool.procs],
        }

    async def close(self) -> None:
        await self.stack.close()
        await self.client.aclose()

    # --- helpers --------------------------------------------------------------------------

    def _run_ids(self, tag: str, n: int) -> list[str]:
        self._seq += 1
        return [f"{tag}-{self._token}{self._seq}-{i}" for i in range(n)]

    async def _submit(self, graph: Graph, run_ids: Sequence[str], items: int) -> None:
        """Raw ``XADD``s of the documented submit message, pipelined."""
        requests = [SubmitRequest(graph_id=graph.id, run_id=r, input={"n": items}) for r in run_ids]
        await push_inbox(self.redis, self.keys.inbox, [encode_inbox(r) for r in requests])

    async def _count(self, status: str) -> int:
        return int(await self.redis.zcard(self.keys.runs_by_status(status)))

    async def _finished(self, completed: int, failed: int, what: str) -> bool:
        """Whether ``completed`` runs are complete; raises if a run failed meanwhile."""
        self.stack.check()
        if await self._count("failed") > failed:
            raise RuntimeError(f"{what}: a run failed (see the dispatcher/worker logs)")
        return await self._count("completed") >= completed

    async def _run(self, graph: Graph, tag: str, runs: int, items: int) -> Pass:
        """Submit ``runs`` runs of ``graph`` at once, each making ``items`` items, and wait
        for them all: what they cost."""
        run_ids = self._run_ids(tag, runs)
        target = await self._count("completed") + runs
        failed = await self._count("failed")
        meter = CpuMeter(self.groups)
        await self.redis.config_resetstat()
        net = await self._net_bytes()
        meter.start()
        await self._submit(graph, run_ids, items)

        async def done() -> bool:
            return await self._finished(target, failed, f"{runs} run(s) of {graph.id}")

        await wait_until(done, self.sizes.timeout_s, f"{tag} runs", interval=POLL_S)
        cpu, wall = meter.stop()
        commands = await command_stats(self.redis)
        net = {k: v - net[k] for k, v in (await self._net_bytes()).items()}
        # the driver's own calls in the window: its looks (2 ZCARDs each, about one per
        # POLL_S) stay in, under 0.5% of the calls; CONFIG RESETSTAT and INFO are not counted
        mapped = runs * items if graph is self.graph else 0
        return Pass(runs, mapped, wall, cpu, commands, net)

    async def _net_bytes(self) -> dict[str, int]:
        """Bytes the server has read from and written to its clients, all of them."""
        stats = await self.redis.info("stats")
        return {
            "in": int(stats["total_net_input_bytes"]),
            "out": int(stats["total_net_output_bytes"]),
        }

    # --- measurements ---------------------------------------------------------------------

    async def cost(self) -> dict[str, Any]:
        """The small maps around the large one, then the runs without a map."""
        sizes = self.sizes
        small, large = sizes.map_small_items, sizes.map_large_items
        await self._run(self.graph, "warm", 2, small)  # graph caches, first-run costs
        await self._run(self.base_graph, "warm", 2, small)
        half = max(1, sizes.map_small_runs // 2)
        before = await self._run(self.graph, "small", half, small)
        big = await self._run(self.graph, "large", 1, large)
        after = await self._run(self.graph, "small", sizes.map_small_runs - half, small)
        base = await self._run(self.base_graph, "none", sizes.map_small_runs, small)
        small_case, large_case = case(before + after, base), case(big, base)
        small_cpu = small_case["cpu_us_per_item"]["total"]
        large_cpu = large_case["cpu_us_per_item"]["total"]
        return {
            "max_concurrency": sizes.map_max_concurrency,
            "small": {
                **small_case,
                "halves_items_per_s": [before.items / before.wall_s, after.items / after.wall_s],
            },
            "large": large_case,
            "without_map": {
                "runs": base.runs,
                "cpu_us_per_run": base.cpu_total_s * 1e6 / base.runs,
                "commands_per_run": base.command_total / base.runs,
                "wall_s": base.wall_s,
            },
            "cpu_ratio": _ratio(large_cpu, small_cpu),
            "commands_ratio": _ratio(
                large_case["commands_per_item"], small_case["commands_per_item"]
            ),
            "map_only_cpu_ratio": _ratio(
                large_case["map_only"]["cpu_us_per_item"], small_case["map_only"]["cpu_us_per_item"]
            ),
        }

    async def _map_record(self, run_id: str) -> NodeRecord | None:
        raw = await self.redis.hget(self.keys.run(run_id).nodes, graphs.MAP_NODE)
        return NodeRecord.model_validate_json(raw) if raw is not None else None

    async def memory(self) -> dict[str, Any]:
        """One large map on its own: the run's keys (and the server's memory) as the map
        starts, at their peak while it runs, and after the run finished."""
        items = self.sizes.map_large_items
        (run_id,) = self._run_ids("memory", 1)
        target = await self._count("completed") + 1
        failed = await self._count("failed")
        first_inbox_entry = await self._first_inbox_entry()
        inbox_before = await self._inbox_bytes()
        before = await used_memory(self.redis)
        started = time.monotonic()
        await self._submit(self.graph, [run_id], items)
        at_start: dict[str, Any] | None = None
        peak_keys = peak_used = 0
        samples = 0
        deadline = started + self.sizes.timeout_s
        while not await self._finished(target, failed, "the memory run"):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the memory run: not done within {self.sizes.timeout_s:g}s")
            record = await self._map_record(run_id) if at_start is None else None
            if at_start is None and (record is None or record.map is None):
                await asyncio.sleep(START_POLL_S)
                continue
            # the map has started: its item inputs are in (the record was read first)
            keys = await self._sizes(run_id, inbox_before)
            used = await used_memory(self.redis) - before
            samples += 1
            peak_keys, peak_used = max(peak_keys, sum(keys.values())), max(peak_used, used)
            if record is not None and record.map is not None:
                if record.status != NodeStatus.RUNNING:
                    raise RuntimeError(f"the map is {record.status} at its first look")
                at_start = {
                    "seconds_after_submit": time.monotonic() - started,
                    "items_done": record.map.done,
                    "items_started": record.map.next,
                    "keys_per_item": {k: v / items for k, v in keys.items()},
                    "keys_bytes_per_item": sum(keys.values()) / items,
                    "used_memory_per_item": used / items,
                }
            await asyncio.sleep(MEMORY_POLL_S)
        wall = time.monotonic() - started
        keys = await self._sizes(run_id, inbox_before)
        used = await used_memory(self.redis) - before
        # the last look may come before the last items' writes
        peak_keys, peak_used = max(peak_keys, sum(keys.values())), max(peak_used, used)
        without_inbox = sum(v for k, v in keys.items() if k != "inbox")
        return {
            "items": items,
            "wall_s": wall,
            "samples": samples,
            "at_start": at_start,
            "peak_keys_bytes_per_item": peak_keys / items,
            "peak_used_memory_per_item": peak_used / items,
            "after_keys_per_item": {k: v / items for k, v in keys.items()},
            "after_keys_bytes_per_item": sum(keys.values()) / items,
            "after_keys_bytes_per_item_without_inbox": without_inbox / items,
            "after_used_memory_per_item": used / items,
            # the dispatcher trims the inbox every 60 s: if it did meanwhile, the inbox's
            # growth (and the server's memory) fell by what it trimmed
            "inbox_trimmed_meanwhile": await self._first_inbox_entry() != first_inbox_entry,
            "history_entries": int(await self.redis.xlen(self.keys.run(run_id).events)),
            "item_fields_left": await self._item_fields(run_id),
        }

    async def _sizes(self, run_id: str, inbox_before: int) -> dict[str, int]:
        """``MEMORY USAGE`` of the run's keys (the outputs hash, history stream, node
        records, run record) and the inbox's growth since ``inbox_before``."""
        rk = self.keys.run(run_id)
        named = {"outputs": rk.outputs, "events": rk.events, "nodes": rk.nodes, "meta": rk.meta}
        out = {}
        for name, key in named.items():
            out[name] = int(await self.redis.memory_usage(key, samples=0) or 0)
        out["inbox"] = await self._inbox_bytes() - inbox_before
        return out

    async def _inbox_bytes(self) -> int:
        return int(await self.redis.memory_usage(self.keys.inbox, samples=0) or 0)

    async def _first_inbox_entry(self) -> bytes | None:
        first = await self.redis.xrange(self.keys.inbox, count=1)
        return first[0][0] if first else None

    async def _item_fields(self, run_id: str) -> int:
        """Fields of the outputs hash that are a map item's (``node#visit|item|in/out``)."""
        fields = await self.redis.hkeys(self.keys.run(run_id).outputs)
        return sum(1 for f in fields if b"|" in f)


async def measure(url: str, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    """``{"cost": per item, small vs large, "memory": per item}`` of one dispatcher."""
    bench = MapBench(url, sizes, log_dir)
    try:
        await bench.start()
        cost = await bench.cost()
        memory = await bench.memory()
    finally:
        await bench.close()
    return {"cost": cost, "memory": memory}
