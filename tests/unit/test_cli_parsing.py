"""The CLI without a server: argument and settings errors exit 2 with a message naming the
problem; validate and export work on the example graphs; ``python -m worker`` refuses bad
settings before touching Redis."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from dispatcher.client import load_graph
from relaygraph.cli import main
from relaygraph.cli_answers import Answers, parse_answers
from relaygraph.cli_common import redact_url
from relaygraph.cli_serve import worker_argv

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/graph.json"))
APPROVAL = str(ROOT / "examples" / "approval" / "graph.json")
TRIAGE = str(ROOT / "examples" / "bug_triage" / "graph.json")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No RELAYGRAPH_* variable of the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("RELAYGRAPH_"):
            monkeypatch.delenv(name)
    yield


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def bad_graph(tmp_path: Path) -> Path:
    path = tmp_path / "bad.json"
    path.write_bytes(
        orjson.dumps(
            {
                "id": "bad",
                "nodes": [{"id": "start", "type": "start"}, {"id": "a", "type": "agent"}],
                "edges": [{"source": "start", "target": "nowhere"}],
            }
        )
    )
    return path


# --- validate and export ----------------------------------------------------------------


def test_examples_exist() -> None:
    assert {p.parent.name for p in EXAMPLES} == {
        "approval",
        "batch_triage",
        "bug_triage",
        "code_review",
        "trip_saga",
    }


def test_validate_examples_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", *map(str, EXAMPLES))
    assert code == 0
    assert out.count(": OK (") == len(EXAMPLES)
    assert "bug-triage v1, 5 nodes" in out


def test_validate_reports_every_problem_and_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = bad_graph(tmp_path)
    code, out, _ = run_cli(capsys, "validate", TRIAGE, str(bad))
    assert code == 2
    assert f"{TRIAGE}: OK" in out
    lines = [ln for ln in out.splitlines() if ln.startswith(f"{bad}: ")]
    assert len(lines) >= 2  # one line per problem, each naming the file
    assert all(re.search(r"\[[a-z_]+\]$", ln) for ln in lines)  # ... and ending in its code
    assert any("nowhere" in ln for ln in lines)  # the dangling edge target is named
    assert any("[missing_end]" in ln for ln in lines)  # and the missing end node


def test_validate_names_each_problem_with_its_path_value_and_what_is_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The new user's graph: an unknown condition operator *and* a parallel child whose
    parent is not a parallel node. Both are reported, one line each, in plain words."""
    path = tmp_path / "two.json"
    graph = {
        "id": "two",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "triage", "type": "agent"},
            {"id": "child", "type": "agent", "parent": "triage"},
            {"id": "end", "type": "end"},
        ],
        "edges": [
            {"source": "start", "target": "triage"},
            {
                "source": "triage",
                "target": "end",
                "condition": {"type": "field", "path": "triage.output.x", "op": "frobnicate"},
            },
        ],
    }
    path.write_bytes(orjson.dumps(graph))
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 2
    lines = out.splitlines()
    op = next(ln for ln in lines if f"{path}: edges[1].condition.op: " in ln)
    assert "'frobnicate'" in op and "known operators: eq, neq" in op and op.endswith("[unknown_op]")
    parent = next(ln for ln in lines if f"{path}: nodes[2].parent: " in ln)
    assert "'triage'" in parent and "parallel" in parent and parent.endswith("[bad_parent]")
    assert "Input should be" not in out + err
    assert "problem(s) in 1 file(s)" in err


def test_validate_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = bad_graph(tmp_path)
    code, out, _ = run_cli(capsys, "validate", "--json", TRIAGE, str(bad))
    assert code == 2
    results = orjson.loads(out)
    assert [r["ok"] for r in results] == [True, False]
    assert results[0]["problems"] == []
    assert all({"code", "path", "message"} == set(p) for p in results[1]["problems"])


def test_validate_missing_file_and_bad_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, out, _ = run_cli(capsys, "validate", str(tmp_path / "missing.json"), str(broken))
    assert code == 2
    assert re.search(r"missing\.json: .*\[unreadable\]", out)
    assert "[bad_json]" in out


@pytest.mark.parametrize(("fmt", "marker"), [("mermaid", "flowchart"), ("dot", "digraph")])
def test_export_examples(capsys: pytest.CaptureFixture[str], fmt: str, marker: str) -> None:
    for path in EXAMPLES:
        code, out, _ = run_cli(capsys, "export", str(path), "--format", fmt)
        assert code == 0, path
        assert marker in out
        for node in load_graph(path).nodes:
            assert node.id in out


def test_export_to_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "graph.mmd"
    code, out, _ = run_cli(capsys, "export", TRIAGE, "-o", str(target))
    assert code == 0 and out == ""
    assert "escalate" in target.read_text()


def test_export_invalid_graph_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "export", str(bad_graph(tmp_path)))
    assert code == 2
    assert "graph 'bad' is invalid" in err and "nowhere" in err


# --- run: everything checked before anything starts -------------------------------------


def test_run_invalid_graph_exits_2_before_starting_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(
        capsys, "run", str(bad_graph(tmp_path)), "--handlers", "examples.approval.handlers"
    )
    assert code == 2
    assert "nowhere" in err
    assert "embedded server" not in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input", "{oops"], "--input is not valid JSON"),
        (["--approve", "nope={}"], "has no node 'nope'"),
        (["--approve", "start"], "node 'start' is a start node"),
        (["--approve", "review=[1, 2]"], "must be a JSON object"),
        (["--reject", "review={bad"], "is not valid JSON"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--timeout", "-1"], "--timeout must be positive"),
        (["--redis", "http://localhost"], "redis_url"),
        (["--prefix", "has space"], "prefix"),
    ],
)
def test_run_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, _, err = run_cli(
        capsys, "run", APPROVAL, "--handlers", "examples.approval.handlers", *extra
    )
    assert code == 2
    assert message in err


def test_run_requires_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", APPROVAL])
    assert exc.value.code == 2
    assert "--handlers" in capsys.readouterr().err


def test_unknown_env_setting_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYGRAPH_REDIS_URLL", "redis://localhost")
    code, _, err = run_cli(capsys, "status", "some-run")
    assert code == 2
    assert "RELAYGRAPH_REDIS_URLL: unknown setting" in err


def test_bad_env_value_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYGRAPH_MAX_MESSAGE_BYTES", "tiny")
    code, _, err = run_cli(capsys, "runs", "--redis", "redis://localhost:1")
    assert code == 2
    assert "max_message_bytes" in err


# --- commands that need a server say so ----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "r1"],
        ["runs"],
        ["cancel", "r1"],
        ["approve", "r1", "review"],
        ["register", TRIAGE],
        ["submit", "bug-triage"],
        ["dispatcher"],
        ["up", "--handlers", "examples.approval.handlers"],
    ],
)
def test_redis_url_required(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert "needs a Redis server: pass --redis URL or set RELAYGRAPH_REDIS_URL" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "g", "--input", "[1,"], "--input is not valid JSON"),
        (["submit", "g", "--timeout", "3"], "--timeout only applies with --wait"),
        (["approve", "r", "n", "--data", "[1]"], "--data must be a JSON object"),
        (["approve", "r", "n", "--data", "{x"], "--data is not valid JSON"),
        (["runs", "--limit", "0"], "--limit must be at least 1"),
        (["dispatcher", "--log-level", "LOUD"], "unknown level 'LOUD'"),
    ],
)
def test_flag_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv, "--redis", "redis://127.0.0.1:1")
    assert code == 2
    assert message in err


def test_unknown_command_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert main([]) == 2
    assert "usage: relaygraph" in capsys.readouterr().err


def test_unreachable_redis_is_exit_1_with_redacted_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "runs", "--redis", "redis://user:s3cret@127.0.0.1:1/0")
    assert code == 1
    assert "cannot reach Redis at redis://user:***@127.0.0.1:1/0" in err
    assert "s3cret" not in err


# --- helpers ------------------------------------------------------------------------------


def test_answers_apply_in_order_and_the_last_repeats() -> None:
    graph = load_graph(APPROVAL)
    planned = parse_answers(
        [("reject", 'review={"feedback": "shorter"}'), ("approve", "review")], graph
    )
    answers = Answers(planned, interactive=False)
    assert answers.next("review") == ("reject", {"feedback": "shorter"})
    assert answers.next("review") == ("approve", {})
    assert answers.next("review") == ("approve", {})
    assert answers.next("draft") is None


def test_redact_url() -> None:
    assert redact_url("redis://u:pw@host:6379/1") == "redis://u:***@host:6379/1"
    assert redact_url("rediss://:pw@host/0") == "rediss://:***@host/0"
    assert redact_url("redis://host:6379") == "redis://host:6379"


def test_worker_command_forwards_flags() -> None:
    import argparse

    args = argparse.Namespace(
        redis="redis://h:1/0", prefix="p", handlers="m:reg", queue=["a", "b"], concurrency=3
    )
    assert worker_argv(args)[1:] == [
        "-m",
        "worker",
        "--redis",
        "redis://h:1/0",
        "--prefix",
        "p",
        "--handlers",
        "m:reg",
        "--queue",
        "a",
        "--queue",
        "b",
        "--concurrency",
        "3",
    ]


# --- python -m worker refuses bad settings (exit 2) before connecting ------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--handlers", "examples.approval.handlers"], "no Redis URL"),
        (["--redis", "redis://127.0.0.1:1"], "no handlers"),
        (
            ["--redis", "redis://127.0.0.1:1", "--handlers", "examples.nope"],
            "module 'examples.nope' not found",
        ),
        (
            ["--redis", "redis://127.0.0.1:1", "--handlers", "examples.approval:nothing"],
            "has no attribute 'nothing'",
        ),
        (
            ["--redis", "http://x", "--handlers", "examples.approval.handlers"],
            "redis_url",
        ),
        (
            [
                "--redis",
                "redis://127.0.0.1:1",
                "--handlers",
                "examples.approval.handlers",
                "--concurrency",
                "0",
            ],
            "concurrency",
        ),
    ],
)
def test_worker_main_bad_settings_exit_2(argv: list[str], message: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "worker", *argv],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
