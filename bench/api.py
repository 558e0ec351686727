"""The HTTP API (``relaygraph api``: one uvicorn process) side by side with the Python client
(``WorkflowClient``), on the same server in the same phase:

- submit throughput: runs started per second through ``POST /v1/runs`` with N requests in
  flight (httpx), and through ``WorkflowClient.submit`` with N calls in flight. No
  dispatcher runs meanwhile (the runs wait in the inbox), so the figure is the submit path
  alone; the two paths alternate in blocks (the machine's speed drifts).
- submit -> first event: from the start of a submit to the run's first event
  (``run.submitted``, which the dispatcher writes). Through the API: ``POST /v1/runs``, then
  ``GET /v1/runs/{id}/events`` (Server-Sent Events) until its first event. Through the
  client: subscribe, submit, the first event on the ``EventStream`` (subscribed before the
  clock starts: a client subscribes before it submits). One dispatcher runs; the samples
  alternate between the two paths.

Every run submitted either way must complete once the dispatcher runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench import graphs
from bench.config import Sizes
from bench.procs import (
    CpuMeter,
    Stack,
    command_stats,
    start_api,
    start_dispatcher,
    wait_until,
)
from bench.report import cpu_per_node, summarize_ms
from bench.sse import sse_events
from dispatcher.client import WorkflowClient
from graph_core.clock import new_run_id
from graph_core.keys import Keys

__all__ = ["FIRST_EVENT", "ApiBench", "measure"]

PREFIX = "bench-api"  # a prefix of its own: the other phases' run counts stay apart
FIRST_EVENT = "run.submitted"
BLOCKS = 2  # throughput: client, HTTP, client, HTTP
WARM_UP = 5  # latency samples per path not kept (connections, the API's event hub)

Submit = Callable[[int, Any], Awaitable[str]]  # (lane, input) -> run id


class ApiBench:
    """One ``relaygraph api`` process (and, for the latency, one dispatcher) and the
    Python client on the benchmark's server, and the two measurements on them."""

    def __init__(self, url: str, sizes: Sizes, log_dir: Path) -> None:
        self.url = url
        self.sizes = sizes
        self.log_dir = log_dir
        self.keys = Keys(PREFIX)
        self.graph = graphs.bare()
        self.stack = Stack()
        self.client = WorkflowClient.from_url(url, prefix=PREFIX)
        self.base = ""
        self.api_pid = 0
        self.submitted = 0  # runs started either way: all must complete
        self._lanes: list[httpx.AsyncClient] = []  # lane 0 also takes the latency samples

    def _http_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base,
            timeout=self.sizes.timeout_s,
            trust_env=False,  # no proxy from the environment between us and loopback
        )

    async def start(self) -> None:
        """Start the API and register the graph through it."""
        proc, self.base = await start_api(self.stack, self.url, PREFIX, self.log_dir)
        self.api_pid = proc.pid
        # One client (one keep-alive connection) per lane: with 32 connections in one
        # httpx pool, the pool's bookkeeping took ~3x the driver's CPU per request (3.2 ms
        # against 0.8-1.1 ms on 2 vCPUs), and the driver shares the machine with the API.
        self._lanes = [self._http_client() for _ in range(self.sizes.api_in_flight)]
        answer = await self._lanes[0].post("/v1/graphs", json=self.graph.to_dict())
        await _expect(answer, 201, "POST /v1/graphs")

    async def close(self) -> None:
        for http in self._lanes:
            with contextlib.suppress(httpx.HTTPError):
                await http.aclose()
        await self.stack.close()
        await self.client.aclose()

    # --- submit throughput ----------------------------------------------------------------

    async def _post_run(self, lane: int, payload: Any) -> str:
        answer = await self._lanes[lane].post(
            "/v1/runs", json={"graph_id": self.graph.id, "input": payload}
        )
        await _expect(answer, 201, "POST /v1/runs")
        self.submitted += 1
        return str(answer.json()["run_id"])

    async def _client_submit(self, lane: int, payload: Any) -> str:
        run_id = await self.client.submit(self.graph.id, payload)
        self.submitted += 1
        return run_id

    async def _in_flight(self, submit: Submit, n: int) -> None:
        """``n`` submits, ``api_in_flight`` of them at any time."""
        numbers = itertools.count()

        async def lane(number: int) -> None:
            while (i := next(numbers)) < n:
                await submit(number, {"i": i})

        await asyncio.gather(*(lane(k) for k in range(self.sizes.api_in_flight)))

    async def throughput(self) -> dict[str, dict[str, Any]]:
        """Submits per second, CPU and Redis commands per submit of each path; no
        dispatcher running."""
        paths: dict[str, Submit] = {"client": self._client_submit, "http": self._post_run}
        for submit in paths.values():  # warm: every lane's connection is open
            await self._in_flight(submit, 2 * self.sizes.api_in_flight)
        redis: Any = self.client.redis
        server = int((await redis.info("server"))["process_id"])
        per_block = max(1, self.sizes.api_submits // BLOCKS)
        walls: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, dict[str, float]] = {name: {} for name in paths}
        commands: dict[str, dict[str, int]] = {name: {} for name in paths}
        for _ in range(BLOCKS):
            for name, submit in paths.items():
                await redis.config_resetstat()
                meter = CpuMeter({"api": [self.api_pid], "server": [server]})
                meter.start()
                await self._in_flight(submit, per_block)
                used, wall = meter.stop()
                walls[name].append(wall)
                for group, seconds in used.items():
                    cpu[name][group] = cpu[name].get(group, 0.0) + seconds
                for command, calls in (await command_stats(redis)).items():
                    commands[name][command] = commands[name].get(command, 0) + calls
        submits = per_block * BLOCKS
        return {
            name: {
                "submits": submits,
                "in_flight": self.sizes.api_in_flight,
                "wall_s": sum(walls[name]),
                "per_s": submits / sum(walls[name]),
                "blocks_per_s": [per_block / wall for wall in walls[name]],
                "cpu_us_per_submit": cpu_per_node(cpu[name], submits),
                "commands_per_submit": {k: v / submits for k, v in commands[name].items()},
            }
            for name in paths
        }

    # --- submit -> first event ------------------------------------------------------------

    async def start_dispatcher(self) -> None:
        """One dispatcher; returns once it has finished the runs submitted so far."""
        await start_dispatcher(self.stack, self.url, PREFIX, self.log_dir)
        await self.all_finished()

    async def all_finished(self) -> None:
        """Wait until every run submitted either way has completed (none may fail)."""
        redis: Any = self.client.redis
        completed = self.keys.runs_by_status("completed")
        failed = self.keys.runs_by_status("failed")

        async def done() -> bool:
            self.stack.check()
            if int(await redis.zcard(failed)):
                raise RuntimeError("a run failed (see the dispatcher's log)")
            return int(await redis.zcard(completed)) >= self.submitted

        await wait_until(done, self.sizes.timeout_s, "the submitted runs", interval=0.05)

    async def _client_sample(self) -> tuple[float, float, str]:
        """(submit -> first event, submit alone, the first event's type), in seconds."""
        run_id = new_run_id()
        async with self.client.subscribe(run_id) as stream:
            started = time.perf_counter()
            await self.client.submit(self.graph.id, None, run_id=run_id)
            submitted = time.perf_counter()
            event = await stream.get(timeout=self.sizes.timeout_s)
            first = time.perf_counter()
        self.submitted += 1
        if event is None:
            raise TimeoutError(f"run {run_id}: no event within {self.sizes.timeout_s:g}s")
        return first - started, submitted - started, str(event.get("type"))

    async def _http_sample(self) -> tuple[float, float, str]:
        """As ``_client_sample``, through the API: POST, then the run's event stream."""
        http = self._lanes[0]
        started = time.perf_counter()
        run_id = await self._post_run(0, None)
        submitted = time.perf_counter()
        async with http.stream("GET", f"/v1/runs/{run_id}/events") as answer:
            await _expect(answer, 200, "GET /v1/runs/{id}/events")
            events = sse_events(answer.aiter_raw())
            event = await anext(events, None)
            first = time.perf_counter()
            if event is None:
                raise RuntimeError(f"run {run_id}: its event stream ended without an event")
            # Read on to the run's end (the stream ends after its terminal event): the
            # connection stays open for the next request instead of being dropped.
            async for _ in events:
                pass
        return first - started, submitted - started, event.event

    async def first_event(self) -> dict[str, dict[str, Any]]:
        """Submit -> first event of both paths, samples alternating; a dispatcher must run."""
        paths = {"client": self._client_sample, "http": self._http_sample}
        samples: dict[str, list[tuple[float, float, str]]] = {name: [] for name in paths}
        for i in range(WARM_UP + self.sizes.api_samples):
            for name, sample in paths.items():
                one = await sample()
                if i >= WARM_UP:
                    samples[name].append(one)
        result = {}
        for name, taken in samples.items():
            kinds = sorted({kind for _, _, kind in taken})
            if kinds != [FIRST_EVENT]:
                raise RuntimeError(f"{name}: the first events were {kinds}, not {FIRST_EVENT}")
            result[name] = {
                **summarize_ms([total for total, _, _ in taken]),
                "first_event": FIRST_EVENT,
                "segments": {
                    "submit": summarize_ms([submit for _, submit, _ in taken]),
                    "submit done -> first event": summarize_ms([t - s for t, s, _ in taken]),
                },
            }
        return result


async def _expect(answer: httpx.Response, status: int, what: str) -> None:
    if answer.status_code != status:
        await answer.aread()  # a streamed answer's body is not read yet
        raise RuntimeError(f"{what}: {answer.status_code}, not {status}: {answer.text[:500]}")


async def measure(url: str, sizes: Sizes, log_dir: Path) -> dict[str, dict[str, Any]]:
    """Both measurements, ``{"http": ..., "client": ...}``: each ``{"submit": throughput,
    "first_event": latency}``."""
    bench = ApiBench(url, sizes, log_dir)
    try:
        await bench.start()
        throughput = await bench.throughput()
        await bench.start_dispatcher()
        latency = await bench.first_event()
        await bench.all_finished()
    finally:
        await bench.close()
    return {name: {"submit": throughput[name], "first_event": latency[name]} for name in throughput}
