"""``delay`` nodes: how late a durable timer completes its node, and what the dispatcher costs
while delays are pending. One ``relaygraph dispatcher`` process, no workers (start -> delay
-> end needs none), a prefix of its own:

- accuracy: runs of start -> nap (a delay of 0.5-3 s, spread evenly over the runs) -> end,
  submitted at once; per run, fired - due = the ``node.completed`` event of ``nap`` (``at``,
  the dispatcher's clock as it handles the timer) less its ``node.delayed`` event's
  ``data.due_at``.
- idle cost: the dispatcher's CPU over a window with nothing pending, then over as long a
  window with many long delays pending and nothing else happening. The pending runs are
  cancelled afterwards (which drops their timers).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import graphs
from bench.config import Sizes
from bench.procs import CpuMeter, Stack, push_inbox, start_dispatcher, wait_until
from bench.report import summarize_ms
from dispatcher.client import WorkflowClient
from graph_core.events import CancelRequested
from graph_core.keys import Keys
from graph_core.messages import SubmitRequest, encode_inbox

__all__ = ["DelayBench", "delay_seconds", "lateness", "measure"]

PREFIX = "bench-delay"  # a prefix of its own: the other phases' run counts stay apart
SHORTEST_S, LONGEST_S = 0.5, 3.0  # the accuracy runs' delays
PENDING_S = 3600.0  # the idle window's delays: none comes due while it is measured
SETTLE_S = 1.0  # after the dispatcher's last work, before its idle CPU is read
POLL_S = 0.1  # how often the driver looks (it shares 2 cores with the dispatcher)
SUBMIT_CHUNK = 1000


def delay_seconds(n: int, shortest: float = SHORTEST_S, longest: float = LONGEST_S) -> list[float]:
    """``n`` delays spread evenly from ``shortest`` to ``longest`` seconds."""
    if n < 1:
        raise ValueError(f"need at least one delay, got {n}")
    if n == 1:
        return [shortest]
    step = (longest - shortest) / (n - 1)
    return [shortest + i * step for i in range(n)]


def lateness(events: Iterable[Mapping[str, Any]], node_id: str = graphs.DELAY_NODE) -> float:
    """Seconds from a delay node's due time (its ``node.delayed`` event's ``data.due_at``) to
    its completion (its ``node.completed`` event's ``at``), from a run's history; negative
    if it completed early. ``ValueError`` if either event is missing."""
    due = fired = None
    for event in events:
        if event.get("node_id") != node_id:
            continue
        if event.get("type") == "node.delayed":
            due = float((event.get("data") or {})["due_at"])
        elif event.get("type") == "node.completed":
            fired = float(event["at"])
    if due is None or fired is None:
        missing = "node.delayed" if due is None else "node.completed"
        raise ValueError(f"no {missing} event of {node_id!r} in the history")
    return fired - due


class DelayBench:
    """One dispatcher on its own prefix, and the two measurements on it."""

    def __init__(self, url: str, sizes: Sizes, log_dir: Path) -> None:
        self.url = url
        self.sizes = sizes
        self.log_dir = log_dir
        self.keys = Keys(PREFIX)
        self.graph = graphs.delay()
        self.stack = Stack()
        self.client = WorkflowClient.from_url(url, prefix=PREFIX)
        self.redis: Any = self.client.redis
        self.dispatcher_pid = 0
        self._seq = 0
        self._token = secrets.token_hex(3)

    async def start(self) -> None:
        await self.client.register_graph(self.graph)
        proc = await start_dispatcher(self.stack, self.url, PREFIX, self.log_dir)
        self.dispatcher_pid = proc.pid

    async def close(self) -> None:
        await self.stack.close()
        await self.client.aclose()

    # --- helpers --------------------------------------------------------------------------

    def _run_ids(self, tag: str, n: int) -> list[str]:
        self._seq += 1
        return [f"{tag}-{self._token}{self._seq}-{i}" for i in range(n)]

    async def _push(self, messages: Sequence[bytes]) -> None:
        """Raw ``XADD``s into the inbox, pipelined: the driver costs the dispatcher little."""
        await push_inbox(self.redis, self.keys.inbox, messages, SUBMIT_CHUNK)

    async def _submit(self, run_ids: Sequence[str], seconds: Sequence[float]) -> None:
        await self._push(
            [
                encode_inbox(
                    SubmitRequest(graph_id=self.graph.id, run_id=run_id, input={"seconds": s})
                )
                for run_id, s in zip(run_ids, seconds, strict=True)
            ]
        )

    async def _count(self, status: str) -> int:
        return int(await self.redis.zcard(self.keys.runs_by_status(status)))

    async def _wait_for(self, status: str, target: int, what: str) -> None:
        """Until ``target`` runs are in ``status``; none may fail meanwhile."""

        async def done() -> bool:
            self.stack.check()
            if await self._count("failed"):
                raise RuntimeError(f"{what}: a run failed (see the dispatcher's log)")
            return await self._count(status) >= target

        await wait_until(done, self.sizes.timeout_s, what, interval=POLL_S)

    async def _timers(self) -> int:
        return int(await self.redis.zcard(self.keys.timers))

    async def _idle_cpu(self) -> tuple[float, float]:
        """The dispatcher's CPU (% of a core) over ``delay_idle_s`` of doing nothing, and the
        window. CPU time comes in ticks of 10 ms: over 5 s, steps of 0.2% of a core."""
        await asyncio.sleep(SETTLE_S)
        meter = CpuMeter({"dispatcher": [self.dispatcher_pid]})
        meter.start()
        await asyncio.sleep(self.sizes.delay_idle_s)
        cpu, wall = meter.stop()
        self.stack.check()
        return 100 * cpu["dispatcher"] / wall, wall

    # --- measurements ---------------------------------------------------------------------

    async def accuracy(self) -> dict[str, Any]:
        """Fired - due of each run's delay, all runs submitted at once."""
        n = self.sizes.delay_runs
        run_ids = self._run_ids("delay", n)
        seconds = delay_seconds(n)
        completed = await self._count("completed")
        meter = CpuMeter({"dispatcher": [self.dispatcher_pid]})
        meter.start()
        await self._submit(run_ids, seconds)
        await self._wait_for("completed", completed + n, "the delayed runs")
        cpu, wall = meter.stop()
        late = [lateness(await self.client.history(run_id)) for run_id in run_ids]
        return {
            **summarize_ms(late),
            "min_ms": min(late) * 1000,
            "runs": n,
            "delay_s": [SHORTEST_S, LONGEST_S],
            "wall_s": wall,
            "dispatcher_cpu_us_per_run": cpu["dispatcher"] * 1e6 / n,
        }

    async def idle(self) -> dict[str, Any]:
        """The dispatcher's CPU with nothing pending, then with ``delay_pending`` long delays
        pending; the pending runs are cancelled afterwards."""
        quiet, quiet_wall = await self._idle_cpu()
        n = self.sizes.delay_pending
        run_ids = self._run_ids("pending", n)
        timers_before = await self._timers()
        await self._submit(run_ids, [PENDING_S] * n)

        async def all_delayed() -> bool:
            self.stack.check()
            return await self._timers() - timers_before >= n

        await wait_until(all_delayed, self.sizes.timeout_s, "the pending delays", interval=POLL_S)
        pending, wall = await self._idle_cpu()
        timers = await self._timers()
        cancelled = await self._count("cancelled")
        await self._push([encode_inbox(CancelRequested(run_id=r, reason="bench")) for r in run_ids])
        await self._wait_for("cancelled", cancelled + n, "cancelling the pending delays")
        return {
            "pending": n,
            "timers_pending": timers,
            "cpu_pct": pending,
            "window_s": wall,
            # CPU time is counted in clock ticks: the smallest step the two figures can show
            "cpu_tick_pct": 100 / (os.sysconf("SC_CLK_TCK") * wall),
            "nothing_pending_cpu_pct": quiet,
            "nothing_pending_window_s": quiet_wall,
            "timers_left_after_cancel": await self._timers(),
        }


async def measure(url: str, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    """``{"accuracy": fired - due, "idle": the dispatcher's CPU}`` of one dispatcher."""
    bench = DelayBench(url, sizes, log_dir)
    try:
        await bench.start()
        accuracy = await bench.accuracy()
        idle = await bench.idle()
    finally:
        await bench.close()
    return {"accuracy": accuracy, "idle": idle}
