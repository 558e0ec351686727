"""CPU per transition of one dispatcher, in this process, with no workers: runs of a 10-node
chain are submitted, then the reports a worker would send are written straight into the
inbox, one wave per chain position. The dispatcher handles them exactly as in production
(XREADGROUP, parse, load, ``advance``, ``apply.lua``, XACK); only the workers are missing.

A second, smaller pass runs under cProfile: its top functions and the time spent in each
stage of handling an entry go into results.json.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import time
from typing import Any

from bench import graphs
from bench.config import Sizes
from bench.procs import command_stats, round_trip, wait_until
from bench.profiles import DISPATCHER_STAGES, summarize
from dispatcher.client import WorkflowClient
from dispatcher.connect import connect
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.events import NodeReported
from graph_core.messages import SubmitRequest, encode_inbox

__all__ = ["measure"]

PREFIX = "benchcpu"  # apart from the dispatcher process of the end-to-end scenarios
CHAIN = 10


class _Bench:
    def __init__(self, url: str) -> None:
        self.redis: Any = connect(url)  # as ``relaygraph dispatcher`` connects
        self.settings = DispatcherSettings(redis_url=url, prefix=PREFIX)
        self.keys = self.settings.keys
        self.dispatcher = Dispatcher(self.redis, self.settings)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.seq = 0

    async def start(self) -> None:
        await WorkflowClient(self.redis, prefix=PREFIX).register_graph(graphs.chain(CHAIN))
        self.task = asyncio.create_task(self.dispatcher.run(self.stop))
        await self.dispatcher.ready.wait()

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.redis.aclose()

    async def _push(self, messages: list[bytes]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for m in messages:
            pipe.xadd(self.keys.inbox, {"m": m})
        await pipe.execute()

    async def _until(self, processed: int, timeout: float) -> None:
        async def done() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()
            return self.dispatcher.processed >= processed

        await wait_until(done, timeout, "in-process dispatcher", interval=0.002)

    async def runs(
        self, n: int, timeout: float, profiler: cProfile.Profile | None = None
    ) -> dict[str, Any]:
        """Submit n runs, then answer their jobs wave by wave; time only the answers."""
        self.seq += 1
        run_ids = [f"cpu{self.seq}-{i}" for i in range(n)]
        graph_id = graphs.chain(CHAIN).id
        base = self.dispatcher.processed
        await self._push(
            [encode_inbox(SubmitRequest(graph_id=graph_id, run_id=r)) for r in run_ids]
        )
        await self._until(base + n, timeout)
        waves = [
            [
                encode_inbox(
                    NodeReported(
                        run_id=r,
                        node_id=f"n{k}",
                        visit=1,
                        attempt=1,
                        status="completed",
                        output={"t": 0.0, "i": 1},
                    )
                )
                for r in run_ids
            ]
            for k in range(CHAIN)
        ]
        await self.redis.config_resetstat()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for k, wave in enumerate(waves):
            await self._push(wave)
            await self._until(base + n * (k + 2), timeout)
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        commands = await command_stats(self.redis)
        completed = await self.redis.zcard(self.keys.runs_by_status("completed"))
        transitions = n * CHAIN
        return {
            "transitions": transitions,
            "runs_completed": int(completed),
            "cpu_us_per_transition": cpu * 1e6 / transitions,
            "wall_us_per_transition": wall * 1e6 / transitions,
            "commands_per_transition": {k: v / transitions for k, v in commands.items()},
        }


async def measure(url: str, sizes: Sizes) -> dict[str, Any]:
    calibration = await round_trip(url)
    bench = _Bench(url)
    await bench.start()
    try:
        await bench.runs(min(20, sizes.cpu_runs), sizes.timeout_s)  # warm-up
        result = await bench.runs(sizes.cpu_runs, sizes.timeout_s)
        profiler = cProfile.Profile()
        profiled = await bench.runs(sizes.profile_runs, sizes.timeout_s, profiler)
        result["profile"] = summarize(
            pstats.Stats(profiler),
            profiled["transitions"],
            "transition",
            DISPATCHER_STAGES,
            "wall clock (in-process, no other load); profiler overhead included",
        )
        result["profiled_cpu_us_per_transition"] = profiled["cpu_us_per_transition"]
        result["round_trip"] = calibration
        return result
    finally:
        await bench.close()
