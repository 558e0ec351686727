"""The benchmark's pure parts: statistics, ratios, goal checks, the table and results.json,
the graphs it runs, its Server-Sent Events reader, how it reads a delay's lateness from a
run's history and how it turns map passes into per-item figures. No processes, no server,
no timing assertions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import graphs
from bench.config import FULL, QUICK, SCENARIOS
from bench.delay import delay_seconds, lateness
from bench.maps import Pass, case, without_runs
from bench.report import (
    Figure,
    Goal,
    advantage,
    build_figures,
    cpu_per_node,
    format_table,
    format_value,
    goal_status,
    percentile,
    rates,
    results_document,
    scale_entry,
    summarize_ms,
    write_json,
)
from bench.sse import SseEvent, SseParser, sse_events
from graph_core.memory import run_local
from graph_core.status import RunStatus


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summarize_ms_converts_seconds() -> None:
    summary = summarize_ms([0.001, 0.002, 0.003])
    assert summary["n"] == 3
    assert summary["median_ms"] == pytest.approx(2.0)
    assert summary["mean_ms"] == pytest.approx(2.0)
    assert summary["max_ms"] == pytest.approx(3.0)


def test_advantage_is_above_one_when_ours_is_better_either_way() -> None:
    assert advantage(200.0, 100.0, "higher") == pytest.approx(2.0)  # twice the rate
    assert advantage(50.0, 100.0, "higher") == pytest.approx(0.5)
    assert advantage(2.0, 10.0, "lower") == pytest.approx(5.0)  # a fifth of the latency
    assert advantage(10.0, 2.0, "lower") == pytest.approx(0.2)
    assert advantage(None, 1.0, "lower") is None
    assert advantage(1.0, None, "higher") is None
    assert advantage(1.0, 0.0, "higher") is None  # a zero or negative value has no ratio
    assert advantage(-1.0, 5.0, "lower") is None


def test_goals_on_values_and_on_ratios_to_a_peer() -> None:
    f = Figure("throughput", "nodes/s", "higher", 1500.0, [("raw arq", 2000.0), ("Celery", None)])
    assert goal_status(f, Goal(">= 0.6x raw arq", "min", 0.6, versus="raw arq")) is True
    assert goal_status(f, Goal(">= 0.8x raw arq", "min", 0.8, versus="raw arq")) is False
    assert goal_status(f, Goal(">= 2x Celery", "min", 2.0, versus="Celery")) is None
    latency = Figure("hop", "ms", "lower", 2.5)
    assert goal_status(latency, Goal("<= 3 ms", "max", 3.0)) is True
    assert goal_status(latency, Goal("<= 2 ms", "max", 2.0)) is False
    assert goal_status(Figure("x", "ms", "lower", None), Goal("<= 1", "max", 1.0)) is None


def test_cpu_per_node_and_scale_entry() -> None:
    per = cpu_per_node({"server": 0.5, "workers": 1.5}, 1000)
    assert per == {"server": 500.0, "workers": 1500.0, "total": 2000.0}
    entry = scale_entry(10, 1000, 0.004, 0.005)
    assert entry["small_ms_per_node"] == pytest.approx(4.0)
    assert entry["large_ms_per_node"] == pytest.approx(5.0)
    assert entry["ratio"] == pytest.approx(1.25)
    assert scale_entry(10, 1000, 0.0, 0.005)["ratio"] is None


def test_format_value_is_compact() -> None:
    assert format_value(None) == "-"
    assert format_value(12345.6) == "12,346"
    assert format_value(42.26) == "42.3"
    assert format_value(3.14159) == "3.14"
    assert format_value(0.0) == "0.00"
    assert format_value(0.0123) == "0.0123"


def sample_raw() -> dict[str, Any]:
    return {
        "hop": {
            "ours": {"median_ms": 2.0, "p99_ms": 12.0, "mean_ms": 2.5},
            "arq@0.5": {"median_ms": 250.0, "p99_ms": 490.0, "mean_ms": 240.0},
            "arq@0.01": {"median_ms": 7.0, "p99_ms": 15.0, "mean_ms": 7.5},
        },
        "throughput": {
            "ours": {"per_s": 1200.0, "cpu_us_per_node": {"total": 900.0}},
            "arq": {"per_s": 2000.0, "cpu_us_per_node": {"total": 600.0}},
            "celery": {"per_s": 500.0},
        },
        "scaling": {
            "ours": {"chain": scale_entry(10, 1000, 0.004, 0.003)},
            "loopgraph": {"chain": scale_entry(10, 1000, 0.0001, 0.003)},
        },
        "concurrent": {"ours": {"runs": 100, "completed": 100, "wall_s": 2.0, "runs_per_s": 50}},
        "idle": {"ours-worker": {"cpu_pct": 0.3}, "arq@0.01": {"cpu_pct": 5.0}},
    }


def test_build_figures_from_partial_measurements() -> None:
    figures = {f.scenario: f for f in build_figures(sample_raw())}
    median = figures["hop latency median"]
    assert median.ours == 2.0
    assert median.advantages()["arq poll 0.5 s"] == pytest.approx(125.0)
    assert median.peer("Celery") is None  # not measured: a gap, not an error
    assert [goal_status(median, g) for g in median.goals] == [True]
    assert [
        goal_status(figures["hop latency p99"], g) for g in figures["hop latency p99"].goals
    ] == [False]
    throughput = figures["throughput, no-op nodes"]
    assert [goal_status(throughput, g) for g in throughput.goals] == [True, True]
    chain = figures["scaling: chain, per-node cost 1000 vs 10"]
    assert chain.ours == pytest.approx(0.75)
    assert chain.advantages()["LoopGraph (in-process)"] == pytest.approx(40.0)
    assert figures["concurrent runs completed (of 100)"].ours == 100
    assert "in-process: chain" not in " ".join(figures)  # scenario not measured: no figure
    assert build_figures({}) == []


def test_table_text_and_markdown() -> None:
    figures = build_figures(sample_raw())
    text = format_table(figures)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["scenario", "unit", "ours"]
    assert any("hop latency median" in line and "125.00x" in line for line in lines)
    assert any("<= 3 ms: met" in line for line in lines)
    assert any("<= 10 ms: MISSED" in line for line in lines)
    assert "ours vs peer" in lines[-1]
    md = format_table(figures, markdown=True).splitlines()
    assert md[0].startswith("| scenario | unit | ours |")
    assert md[1] == "|---|---|---|---|---|---|---|"
    assert all(line.count("|") == 8 for line in md)  # 7 columns on every row


def test_results_document_round_trips_through_json(tmp_path: Path) -> None:
    raw = sample_raw()
    figures = build_figures(raw)
    document = results_document(raw, figures, {"mode": "quick"})
    out = tmp_path / "sub" / "results.json"
    write_json(out, document)
    loaded = json.loads(out.read_text())
    assert loaded["meta"] == {"mode": "quick"}
    assert loaded["raw"] == raw
    throughput = next(f for f in loaded["figures"] if f["scenario"] == "throughput, no-op nodes")
    arq = next(p for p in throughput["peers"] if p["name"] == "raw arq")
    assert arq["ours_vs_peer"] == pytest.approx(0.6)
    assert [g["met"] for g in throughput["goals"]] == [True, True]


def test_quick_sizes_are_smaller_than_full() -> None:
    assert QUICK.throughput_runs < FULL.throughput_runs
    assert QUICK.concurrent_runs < FULL.concurrent_runs
    assert QUICK.scale_large < FULL.scale_large
    assert FULL.scale_large == 1000 and FULL.concurrent_runs == 10_000
    assert QUICK.api_submits < FULL.api_submits
    assert QUICK.api_samples < FULL.api_samples
    assert len(set(SCENARIOS)) == len(SCENARIOS)
    assert "api" in SCENARIOS
    assert QUICK.delay_runs < FULL.delay_runs
    assert QUICK.delay_pending < FULL.delay_pending
    assert SCENARIOS[-2:] == ("delay", "map")
    assert QUICK.map_large_items < FULL.map_large_items == 10_000
    assert QUICK.map_small_runs < FULL.map_small_runs
    assert FULL.map_small_items == QUICK.map_small_items == 10


@pytest.mark.parametrize(
    ("graph", "jobs"),
    [
        (graphs.chain(5), 5),
        (graphs.fanout(4), 6),
        (graphs.loop(7), 7),
        (graphs.single(), 1),
        (graphs.bare(), 0),
        (graphs.delay(), 0),
    ],
)
def test_bench_graphs_run_their_job_count(graph: Any, jobs: int) -> None:
    handlers = {graphs.NOOP: lambda node_id, config, ctx: {"i": ctx["visit"]}}
    result = run_local(graph, handlers, input={"seconds": 1.5})
    assert result.run.status == RunStatus.COMPLETED
    assert len(result.executions) == jobs == graphs.jobs_of(graph)


def test_the_map_graph_runs_a_job_per_item_over_make_output() -> None:
    handlers = {
        graphs.NOOP: lambda node_id, config, ctx: {"i": ctx["index"]},
        graphs.MAKE_ITEMS: lambda node_id, config, ctx: list(range(ctx["input"]["n"])),
    }
    result = run_local(graphs.map_items(3), handlers, input={"n": 7})
    assert result.run.status == RunStatus.COMPLETED
    assert len(result.executions) == 1 + 7
    assert result.run.output == [{"i": i} for i in range(7)]
    started = next(
        h
        for t in result.transitions
        for h in t.history
        if h.type == "map.started" and h.node_id == graphs.MAP_NODE
    )
    assert started.data == {"items": 7, "max_concurrency": 3}
    none = run_local(graphs.make_only(), handlers, input={"n": 7})
    assert none.run.status == RunStatus.COMPLETED and len(none.executions) == 1


def map_pass(runs: int, items: int, cpu: float, commands: int) -> Pass:
    """A pass whose CPU seconds are split 1:2:3 over server, dispatcher and workers."""
    split = {"server": cpu / 6, "dispatcher": cpu / 3, "workers": cpu / 2, "driver": 0.5}
    net = {"in": 100 * items, "out": 200 * items}
    return Pass(runs, items, 1.0, split, {"hget": commands // 2, "evalsha": commands // 2}, net)


def test_map_passes_add_up_and_give_per_item_figures() -> None:
    both = map_pass(50, 500, 1.0, 20_000) + map_pass(50, 500, 2.0, 24_000)
    assert (both.runs, both.items, both.wall_s) == (100, 1000, 2.0)
    assert both.cpu_total_s == pytest.approx(3.0)  # the driver is not an item's cost
    assert both.commands == {"hget": 22_000, "evalsha": 22_000}
    base = map_pass(100, 0, 0.5, 8_000)  # runs without a map: 5 ms and 80 commands a run
    figures = case(both, base)
    assert figures["items_per_s"] == pytest.approx(500.0)
    assert figures["cpu_us_per_item"]["total"] == pytest.approx(3000.0)
    assert figures["cpu_us_per_item"]["workers"] == pytest.approx(1500.0)
    assert figures["driver_cpu_us_per_item"] == pytest.approx(1000.0)
    assert figures["commands_per_item"] == pytest.approx(44.0)
    assert figures["net_bytes_per_item"] == {"in": 100.0, "out": 200.0}
    assert figures["map_only"] == {
        "cpu_us_per_item": pytest.approx(2500.0),
        "commands_per_item": pytest.approx(36.0),
    }
    assert "map_only" not in case(both)
    assert without_runs(map_pass(1, 10, 0.001, 10), base) == (0.0, 0.0)  # never below zero
    with pytest.raises(ValueError):
        case(base)  # no items: no per-item figure
    with pytest.raises(ValueError):
        without_runs(both, Pass())


def map_raw(cpu_ratio: float) -> dict[str, Any]:
    small = case(map_pass(100, 1000, 3.0, 52_000), map_pass(100, 0, 0.5, 8_000))
    large = case(map_pass(1, 10_000, 30.0 * cpu_ratio, 440_000), map_pass(100, 0, 0.5, 8_000))
    return {
        "map": {
            "ours": {
                "cost": {
                    "max_concurrency": 50,
                    "small": small,
                    "large": large,
                    "cpu_ratio": cpu_ratio,
                    "commands_ratio": 44.0 / 52.0,
                    "map_only_cpu_ratio": 1.1,
                },
                "memory": {
                    "items": 10_000,
                    "at_start": {
                        "seconds_after_submit": 0.05,
                        "items_done": 3,
                        "items_started": 53,
                        "keys_per_item": {"outputs": 60.0, "events": 1.0, "inbox": 0.5},
                        "keys_bytes_per_item": 61.5,
                        "used_memory_per_item": 120.0,
                    },
                    "peak_keys_bytes_per_item": 700.0,
                    "peak_used_memory_per_item": 720.0,
                    "after_keys_per_item": {
                        "events": 350.0,
                        "outputs": 70.0,
                        "meta": 30.0,
                        "nodes": 0.1,
                        "inbox": 200.0,
                    },
                    "after_keys_bytes_per_item": 650.1,
                    "after_keys_bytes_per_item_without_inbox": 450.1,
                    "after_used_memory_per_item": 640.0,
                    "history_entries": 20_009,
                    "item_fields_left": 0,
                    "inbox_trimmed_meanwhile": False,
                },
            }
        }
    }


def test_map_figures_report_the_cost_ratio_and_memory_per_item() -> None:
    figures = {f.scenario: f for f in build_figures(map_raw(1.2))}
    ratio = figures["map: CPU per item, 10000 vs 10 items"]
    assert ratio.ours == 1.2 and ratio.unit == "ratio"
    assert [goal_status(ratio, g) for g in ratio.goals] == [True]
    assert "100 runs of a 10-item map" in ratio.note and "max_concurrency 50" in ratio.note
    assert "10 items 3,000 µs (server 500, dispatcher 1,000, workers 1,500)" in ratio.note
    cpu = figures["map: CPU per item, 10000-item map"]
    assert cpu.ours == pytest.approx(3600.0)
    assert cpu.peer("10-item maps") == pytest.approx(3000.0)
    commands = figures["map: Redis commands per item, 10000 vs 10 items"]
    assert commands.ours == pytest.approx(44.0 / 52.0)
    assert "52.0 -> 44.0 per item" in commands.note
    start = figures["map: Redis memory per item as a 10000-item map starts"]
    assert start.ours == 61.5 and start.peer("run's keys at their peak") == 700.0
    assert start.peer("server used_memory") == 120.0
    assert "50.00 ms after the submit (3 items done, 53 started)" in start.note
    assert "outputs hash 60.0 (the item inputs" in start.note
    left = figures["map: Redis memory per item left after a 10000-item map"]
    assert (left.ours, left.peer("without inbox")) == (650.1, 450.1)
    assert "history 350 (20009 entries)" in left.note and "item fields left: 0" in left.note
    assert "trimmed" not in left.note
    trimmed = map_raw(1.2)
    trimmed["map"]["ours"]["memory"]["inbox_trimmed_meanwhile"] = True
    assert "trimmed the inbox meanwhile" in build_figures(trimmed)[-1].note
    slow = {f.scenario: f for f in build_figures(map_raw(1.8))}
    missed = slow["map: CPU per item, 10000 vs 10 items"]
    assert [goal_status(missed, g) for g in missed.goals] == [False]
    assert "<= 1.5x: MISSED" in format_table(list(slow.values()))
    assert "map:" not in " ".join(f.scenario for f in build_figures(sample_raw()))


def test_loop_rates_count_iterations_not_nodes() -> None:
    # an engine that needs two nodes per iteration is not faster per iteration
    two_nodes = rates("loop", 100, 202, 0.001)
    one_node = rates("loop", 100, 100, 0.001)
    assert two_nodes["nodes_per_s"] == one_node["nodes_per_s"] == pytest.approx(1000.0)
    assert two_nodes["iterations_per_s"] == pytest.approx(100 / 0.202)
    assert one_node["iterations_per_s"] == pytest.approx(1000.0)
    assert "iterations_per_s" not in rates("chain", 100, 100, 0.001)


def api_raw(http_median: float, client_median: float) -> dict[str, Any]:
    def latency(median: float) -> dict[str, Any]:
        return {
            "n": 200,
            "median_ms": median,
            "p99_ms": 2 * median,
            "first_event": "run.submitted",
            "segments": {
                "submit": {"median_ms": median / 2},
                "submit done -> first event": {"median_ms": median / 2},
            },
        }

    def submit(per_s: float, cpu: dict[str, float]) -> dict[str, Any]:
        return {
            "submits": 3000,
            "in_flight": 32,
            "per_s": per_s,
            "blocks_per_s": [per_s, per_s],
            "cpu_us_per_submit": cpu_per_node(cpu, 1),
        }

    return {
        "api": {
            "http": {
                "submit": submit(1200.0, {"api": 5e-4, "driver": 3e-4, "server": 1e-4}),
                "first_event": latency(http_median),
            },
            "client": {
                "submit": submit(4000.0, {"api": 0.0, "driver": 2e-4, "server": 1e-4}),
                "first_event": latency(client_median),
            },
        }
    }


def test_api_figures_compare_the_http_api_with_the_client() -> None:
    figures = {f.scenario: f for f in build_figures(api_raw(2.5, 2.0))}
    submits = figures["HTTP API: submits, POST /v1/runs, 32 in flight"]
    assert submits.ours == 1200.0
    assert submits.advantages() == {"WorkflowClient.submit": pytest.approx(0.3)}
    assert [goal_status(submits, g) for g in submits.goals] == [True]
    cpu = figures["HTTP API: CPU per submit, all processes"]
    assert cpu.ours == pytest.approx(900.0)
    assert cpu.peer("WorkflowClient.submit") == pytest.approx(300.0)
    median = figures["HTTP API: submit -> first SSE event, median"]
    assert (median.ours, median.peer("WorkflowClient EventStream")) == (2.5, 2.0)
    assert figures["HTTP API: submit -> first SSE event, p99"].ours == 5.0
    overhead = figures["HTTP API: first-event overhead over the client, median"]
    assert overhead.ours == pytest.approx(0.5)
    assert [goal_status(overhead, g) for g in overhead.goals] == [True]
    assert "p99: 1.00 ms" in overhead.note
    slow = {f.scenario: f for f in build_figures(api_raw(6.0, 2.0))}
    late = slow["HTTP API: first-event overhead over the client, median"]
    assert [goal_status(late, g) for g in late.goals] == [False]
    assert "HTTP API" not in " ".join(f.scenario for f in build_figures(sample_raw()))


def test_delays_spread_evenly_over_their_range() -> None:
    assert delay_seconds(6) == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    spread = delay_seconds(200)
    assert min(spread) == 0.5 and max(spread) == pytest.approx(3.0)
    assert len(set(spread)) == 200
    assert delay_seconds(1) == [0.5]
    with pytest.raises(ValueError):
        delay_seconds(0)


def test_lateness_reads_the_delay_events_of_a_run() -> None:
    # run_local fires timers at once on its own clock: the fields are what a dispatcher writes
    result = run_local(graphs.delay(), {}, input={"seconds": 1.5})
    events = [e.model_dump() for t in result.transitions for e in t.history]
    assert result.run.status == RunStatus.COMPLETED
    delayed = next(e for e in events if e["type"] == "node.delayed")
    assert delayed["node_id"] == graphs.DELAY_NODE
    assert delayed["data"]["due_at"] == pytest.approx(delayed["at"] + 1.5)
    fired = next(
        e for e in events if e["type"] == "node.completed" and e["node_id"] == graphs.DELAY_NODE
    )
    assert lateness(events) == pytest.approx(fired["at"] - delayed["at"] - 1.5)
    late = [
        {"type": "node.completed", "node_id": "start", "at": 90.0},
        {"type": "node.delayed", "node_id": "nap", "at": 100.0, "data": {"due_at": 102.0}},
        {"type": "node.completed", "node_id": "nap", "at": 102.25},
    ]
    assert lateness(late) == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"no node\.completed event"):
        lateness(late[:2])
    with pytest.raises(ValueError, match=r"no node\.delayed event"):
        lateness([late[2]])


def delay_raw(p50_ms: float, p99_ms: float) -> dict[str, Any]:
    return {
        "delay": {
            "ours": {
                "accuracy": {
                    **summarize_ms([0.001, p50_ms / 1000, p99_ms / 1000]),
                    "median_ms": p50_ms,
                    "p99_ms": p99_ms,
                    "min_ms": 0.4,
                    "runs": 200,
                    "delay_s": [0.5, 3.0],
                    "dispatcher_cpu_us_per_run": 350.0,
                },
                "idle": {
                    "pending": 1000,
                    "timers_pending": 1000,
                    "cpu_pct": 0.6,
                    "window_s": 5.0,
                    "cpu_tick_pct": 0.2,
                    "nothing_pending_cpu_pct": 0.4,
                    "timers_left_after_cancel": 0,
                },
            }
        }
    }


def test_delay_figures_report_accuracy_and_the_idle_cost() -> None:
    figures = {f.scenario: f for f in build_figures(delay_raw(1.5, 4.0))}
    p50 = figures["delay accuracy (fired \N{MINUS SIGN} due), p50"]
    p99 = figures["delay accuracy (fired \N{MINUS SIGN} due), p99"]
    assert (p50.ours, p99.ours, p50.unit) == (1.5, 4.0, "ms")
    assert [goal_status(f, g) for f in (p50, p99) for g in f.goals] == [True, True]
    assert "200 runs" in p50.note and "0.50-3.00 s" in p50.note
    assert "before due_at" not in p50.note
    early = delay_raw(1.5, 4.0)
    early["delay"]["ours"]["accuracy"]["min_ms"] = -0.3  # the zset's whole milliseconds
    assert "before due_at" in build_figures(early)[0].note
    idle = figures["idle dispatcher CPU, 1000 delays pending"]
    assert idle.ours == 0.6
    assert idle.advantages() == {"nothing pending": pytest.approx(0.4 / 0.6)}
    assert "0 left after cancelling" in idle.note and "one CPU tick: 0.20%" in idle.note
    slow = {f.scenario: f for f in build_figures(delay_raw(400.0, 1500.0))}
    late = slow["delay accuracy (fired \N{MINUS SIGN} due), p99"]
    assert [goal_status(late, g) for g in late.goals] == [False]
    assert "within 1 s: MISSED" in format_table(list(slow.values()))
    assert "delay" not in " ".join(f.scenario for f in build_figures(sample_raw()))


def test_sse_parser_reads_events_split_anywhere() -> None:
    stream = (
        b": a comment\n\n"
        b'id: 1-0\r\nevent: run.submitted\r\ndata: {"a": 1}\r\n\r\n'
        b"data: one\rdata:two\r\r"
        b"event: no-data\n\n"
        b"id: 2-0\nevent: run.completed\ndata: {}\n\n"
    )
    expected = [
        SseEvent('{"a": 1}', "run.submitted", "1-0"),
        SseEvent("one\ntwo", "message", "1-0"),  # the last id carries over
        SseEvent("{}", "run.completed", "2-0"),
    ]
    whole = SseParser().feed(stream)
    assert whole == expected
    parser = SseParser()
    byte_by_byte = [e for i in range(len(stream)) for e in parser.feed(stream[i : i + 1])]
    assert byte_by_byte == expected
    assert SseParser().feed(b"data: unfinished\n") == []  # no blank line yet


async def test_sse_events_yields_each_event_once_its_chunk_arrives() -> None:
    async def chunks() -> Any:
        yield b"event: run.submitted\ndata: {}\n"
        yield b"\nevent: run.completed\nda"
        yield b"ta: {}\n\n"

    kinds = [event.event async for event in sse_events(chunks())]
    assert kinds == ["run.submitted", "run.completed"]
