"""``relaygraph history`` and ``relaygraph export --run`` on a finished run of a real
deployment (``relaygraph up`` on the test server): a loop that visits ``count`` three times,
then ``explode``, which fails twice (one retry) and fails the run."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.e2e.test_examples_cli import relaygraph, relaygraph_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRAPH = "tests/e2e/history_graph.json"


@pytest.fixture(scope="module")
def finished_run(redis_url: str) -> Iterator[tuple[list[str], str]]:
    """A deployment with the history handlers and one failed run on it: (flags, run id)."""
    flags = ["--redis", redis_url, "--prefix", f"hist-{secrets.token_hex(4)}"]
    with relaygraph_up([*flags, "--handlers", "tests.e2e.history_handlers", "--workers", "1"]):
        submitted = relaygraph("submit", GRAPH, "--wait", "--timeout", "60", "--json", *flags)
        assert submitted.returncode == 1, submitted.stderr  # the run failed
        view = orjson.loads(submitted.stdout)
        assert view["status"] == "failed" and view["error"]["node_id"] == "explode"
        yield flags, view["run_id"]


def history_json(flags: list[str], run_id: str, *more: str) -> list[dict[str, Any]]:
    proc = relaygraph("history", run_id, "--json", *more, *flags, timeout=30)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = orjson.loads(proc.stdout)
    return rows


def test_history_json_lists_every_step_with_keys_changed_and_durations(
    finished_run: tuple[list[str], str],
) -> None:
    flags, run_id = finished_run
    rows = history_json(flags, run_id)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["event"] == "run.submitted" and rows[-1]["event"] == "run.failed"

    counted = [r for r in rows if r["node_id"] == "count" and r["event"] == "node.completed"]
    assert [r["visit"] for r in counted] == [1, 2, 3]
    assert counted[0]["keys_changed"] == ["count.output.n", "count.output.unit"]
    assert counted[1]["keys_changed"] == ["count.output.n"] == counted[2]["keys_changed"]
    assert all(r["duration_s"] is not None and r["duration_s"] >= 0 for r in counted)

    exploded = [r for r in rows if r["node_id"] == "explode" and r["event"] != "node.enqueued"]
    assert [(r["event"], r["attempt"]) for r in exploded] == [
        ("node.retry_scheduled", 1),
        ("node.failed", 2),
    ]
    assert exploded[1]["detail"] == "ValueError: exploded on attempt 2"
    assert exploded[1]["keys_changed"] == [] and exploded[1]["duration_s"] >= 0
    assert rows[-1]["duration_s"] >= max(r["duration_s"] or 0 for r in rows[:-1])
    assert not any(r["node_id"] == "never" for r in rows)


def test_history_table_has_one_row_per_step(finished_run: tuple[list[str], str]) -> None:
    flags, run_id = finished_run
    rows = history_json(flags, run_id)
    proc = relaygraph("history", run_id, *flags, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = ["STEP", "NODE", "VISIT", "EVENT", "KEYS", "CHANGED", "DURATION", "DETAIL"]
    assert lines[0].split() == header
    shown = [r for r in rows if r["event"] != "node.enqueued"]
    assert len(lines) == 1 + len(shown)
    third = next(ln for ln in lines if re.match(r"^\d+\s+count\s+3\s+node\.completed\b", ln))
    assert "count.output.n" in third and "count.output.unit" not in third
    assert re.search(r"\d+\.\d{3}s", third)
    assert any("explode" in ln and "ValueError: exploded on attempt 2" in ln for ln in lines)

    everything = relaygraph("history", run_id, "--all", *flags, timeout=30)
    assert len(everything.stdout.splitlines()) == 1 + len(rows)


def test_history_of_an_unknown_run_is_an_error(finished_run: tuple[list[str], str]) -> None:
    flags, _ = finished_run
    proc = relaygraph("history", "no-such-run", *flags, timeout=30)
    assert proc.returncode == 1
    assert "run 'no-such-run' not found" in proc.stderr


def _mermaid_class_of(text: str, node: str) -> str:
    for line in text.splitlines():
        m = re.match(r"\s+class (\S+) (st_\w+)$", line)
        if m and f"n_{node}" in m.group(1).split(","):
            return m.group(2)
    raise AssertionError(f"node {node!r} has no class in:\n{text}")


def test_export_run_colours_nodes_by_status_with_a_legend(
    finished_run: tuple[list[str], str],
) -> None:
    flags, run_id = finished_run
    proc = relaygraph("export", GRAPH, "--run", run_id, *flags, timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert _mermaid_class_of(text, "count") == "st_completed"
    assert _mermaid_class_of(text, "explode") == "st_failed"
    assert _mermaid_class_of(text, "never") == "st_pending"  # never reached
    assert 'subgraph rg_legend["legend"]' in text
    for status in ("completed", "failed", "pending"):
        assert f'lg_st_{status}["{status}"]' in text
        assert re.search(rf"classDef st_{status} fill:#", text)

    # by graph id (the run's pinned version is read from Redis), as DOT
    dot = relaygraph("export", "history-demo", "--run", run_id, "--format", "dot", *flags)
    assert dot.returncode == 0, dot.stderr
    assert re.search(r'n_explode \[[^\]]*fillcolor="#f8d7da"', dot.stdout)
    assert re.search(r'n_count \[[^\]]*tooltip="completed"', dot.stdout)
    assert "subgraph cluster_rg_legend" in dot.stdout


def test_export_run_of_another_graph_or_unknown_run_is_an_error(
    finished_run: tuple[list[str], str],
) -> None:
    flags, run_id = finished_run
    other = relaygraph("export", "examples/bug_triage/graph.json", "--run", run_id, *flags)
    assert other.returncode == 2
    assert "is a run of graph 'history-demo', not 'bug-triage'" in other.stderr
    missing = relaygraph("export", GRAPH, "--run", "nope", *flags)
    assert missing.returncode == 1 and "run 'nope' not found" in missing.stderr
    # a plain export needs no Redis at all
    plain = relaygraph("export", GRAPH)
    assert plain.returncode == 0 and "classDef" not in plain.stdout
