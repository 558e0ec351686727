"""How big each benchmark is: the full run (``python -m bench``) and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "SCENARIOS", "Sizes"]

# Scenario names, in the order they run (``--only`` takes these).
SCENARIOS = (
    "inprocess",  # pure engine cost: run_local and advance() vs LoopGraph, no Redis
    "dispatcher-cpu",  # CPU per transition of an in-process dispatcher, with a profile
    "hop",  # report -> next handler start, along a chain
    "throughput",  # no-op nodes per second through 1 dispatcher + N workers
    "memory",  # Redis bytes per finished 10-node run
    "scaling",  # per-node cost of 1,000-node chains / fan-outs / loops vs 10
    "concurrent",  # many runs in flight at once, all must complete
    "idle",  # CPU of idle processes
    "api",  # the HTTP API (uvicorn) vs the Python client: submits/s, submit -> first event
    "delay",  # delay nodes: fired - due, and the dispatcher's CPU while delays are pending
    "map",  # map nodes: cost per item of a 10,000-item map vs 10-item maps, memory per item
)


@dataclass(frozen=True)
class Sizes:
    """Every knob of one benchmark run."""

    workers: int = 2  # worker processes (ours and arq; Celery: prefork children)
    concurrency: int = 10  # jobs at once per worker process (ours and arq's max_jobs)
    hop_chain: int = 200  # nodes in the hop-latency chain
    hop_chain_slow: int = 40  # hops for arq at its default poll_delay (0.5 s each)
    throughput_runs: int = 600  # 10-node runs (arq: 10 jobs each) in the throughput test
    scale_small: int = 10
    scale_large: int = 1000
    scale_repeats: int = 6  # small runs, half before and half after the large one
    concurrent_runs: int = 10_000
    cpu_runs: int = 500  # 10-node runs pushed through the in-process dispatcher
    profile_runs: int = 200  # ... and again under cProfile
    inproc_repeats: int = 5
    inproc_chain: int = 100
    inproc_large: int = 1000
    idle_s: float = 3.0
    api_submits: int = 3000  # runs submitted per path (HTTP, client) in the API throughput
    api_in_flight: int = 32  # ... this many at a time
    api_samples: int = 300  # submit -> first event samples per path
    delay_runs: int = 200  # runs of start -> delay (0.5-3 s) -> end, for fired - due
    delay_pending: int = 1000  # long delays pending while the dispatcher's idle CPU is read
    delay_idle_s: float = 5.0  # ... over this long, and as long with nothing pending
    map_small_items: int = 10  # items of each small map ...
    map_small_runs: int = 100  # ... and its runs (half before, half after the large map)
    map_large_items: int = 10_000  # items of the one large map
    map_max_concurrency: int = 50  # the maps' max_concurrency
    rounds: int = 3  # hop and throughput are measured this often per system, the best kept
    timeout_s: float = 300.0  # any one measurement gives up after this


FULL = Sizes()

QUICK = Sizes(
    hop_chain=40,
    hop_chain_slow=4,
    throughput_runs=60,
    scale_large=100,
    scale_repeats=2,
    concurrent_runs=300,
    cpu_runs=40,
    profile_runs=20,
    inproc_repeats=2,
    inproc_chain=50,
    inproc_large=200,
    idle_s=1.0,
    api_submits=400,
    api_samples=30,
    delay_runs=30,
    delay_pending=100,
    delay_idle_s=2.0,
    map_small_runs=20,
    map_large_items=1000,
    rounds=1,
    timeout_s=60.0,
)
