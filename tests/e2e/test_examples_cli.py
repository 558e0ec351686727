"""The examples, run exactly as their READMEs show: ``relaygraph run ...`` in a subprocess,
through the venv's console script, with the embedded server. Plus the failure modes of
``run`` (missing handler, failing run, unanswered approval, timeout, Ctrl-C) and the
server-backed commands against ``relaygraph up``."""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from graph_core.events import history_event
from tests.support.waiting import wait_until_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RELAYGRAPH = str(Path(sys.executable).parent / "relaygraph")
DEMO_INPUT = '{"title": "Checkout returns 500", "body": "production is down for all users"}'
CODE = "def foo():\n    pass\n\ndef bar(x):\n    return x\n"
RUN_TIMEOUT_S = 120
BLOCKING_WORKERS = "-m worker --handlers tests.e2e.blocking_handlers"  # their command line


def cli_env() -> dict[str, str]:
    """The caller's environment without RELAYGRAPH_* settings (so ``run`` embeds a server)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAYGRAPH_")}


def relaygraph(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RELAYGRAPH, *args],
        check=False,
        cwd=ROOT,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_json(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = relaygraph("run", *args, "--json")
    doc = orjson.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, doc, proc.stderr


def processes_with(needle: str) -> list[int]:
    """Live processes whose command line contains ``needle`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> str:
    """Read ``proc``'s stdout until a line containing ``marker``; fail at the deadline."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while marker not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (proc.poll() is not None and not sel.select(0)):
                raise AssertionError(f"no {marker!r} in output within {timeout}s: {seen!r}")
            if sel.select(remaining):
                line = proc.stdout.readline()
                seen += line
    return seen


@contextlib.contextmanager
def relaygraph_up(
    argv: list[str],
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[str]:
    """``relaygraph up ARGV`` until the block ends (then SIGTERM, which must exit 0); yields
    its start-up banner. Its log goes to ``log`` if given (for a test to show on failure)."""
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(log.open("w")) if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            [RELAYGRAPH, "up", *argv],
            cwd=cwd,
            env=cli_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            yield read_until(proc, "relaygraph up:")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


# --- the examples -------------------------------------------------------------------------


def test_bug_triage_demo_as_the_makefile_runs_it() -> None:
    proc = relaygraph(
        "run",
        "examples/bug_triage/graph.json",
        "--handlers",
        "examples.bug_triage.handlers",
        "--input",
        DEMO_INPUT,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "triage (visit 1)" in out and "escalate (visit 1)" in out
    assert "assign skipped" in out
    assert " completed in " in out
    result = orjson.loads(out.split("result:\n", 1)[1])
    assert result["severity"] == "critical" and result["notified"] == "slack"
    assert result["text"] == "[critical] Checkout returns 500"


def test_bug_triage_non_critical_goes_to_assign() -> None:
    code, doc, err = run_json(
        "examples/bug_triage/graph.json",
        "--handlers",
        "examples.bug_triage.handlers",
        "--input",
        '{"title": "Typo on the login page"}',
    )
    assert code == 0, err
    assert doc["status"] == "completed"
    assert doc["output"]["assignee"] == "team-identity"
    assert doc["nodes"]["escalate"]["status"] == "skipped"
    assert doc["nodes"]["triage"]["output"]["severity"] == "minor"


def test_code_review_loops_until_the_threshold() -> None:
    code, doc, err = run_json(
        "examples/code_review/graph.json",
        "--handlers",
        "examples.code_review.handlers",
        "--input",
        orjson.dumps({"code": CODE, "quality_threshold": 75}).decode(),
    )
    assert code == 0, err
    assert doc["status"] == "completed"
    assert doc["output"]["quality_score"] >= 75 and doc["output"]["passed"] is True
    visits = {n: doc["nodes"][n]["visits"] for n in ("extract", "detect", "evaluate")}
    assert visits == {"extract": 1, "detect": 4, "evaluate": 4}
    assert doc["output"]["iteration"] == 4


def test_approval_with_approve_flag() -> None:
    code, doc, err = run_json(
        "examples/approval/graph.json",
        "--handlers",
        "examples.approval.handlers",
        "--input",
        '{"topic": "relaygraph 0.1"}',
        "--approve",
        'review={"channel": "blog"}',
    )
    assert code == 0, err
    assert doc["output"]["published"] is True and doc["output"]["channel"] == "blog"
    assert doc["output"]["title"] == "What's new: relaygraph 0.1"
    assert doc["nodes"]["review"]["output"]["decision"] == "approve"
    assert doc["nodes"]["revise"]["visits"] == 0


def test_approval_reject_then_approve() -> None:
    proc = relaygraph(
        "run",
        "examples/approval/graph.json",
        "--handlers",
        "examples.approval.handlers",
        "--reject",
        'review={"feedback": "add a changelog link"}',
        "--approve",
        "review",
    )
    assert proc.returncode == 0, proc.stderr
    assert "review waiting for approval" in proc.stdout
    assert '→ reject review with {"feedback":"add a changelog link"}' in proc.stdout
    assert "review approved by cli (visit 2)" in proc.stdout
    result = orjson.loads(proc.stdout.split("result:\n", 1)[1])
    assert result["revision"] == 1 and result["title"].endswith("(rev 1)")


# --- run's failure modes ---------------------------------------------------------------------


def test_unanswered_approval_without_a_terminal_exits_1() -> None:
    proc = relaygraph(
        "run", "examples/approval/graph.json", "--handlers", "examples.approval.handlers"
    )
    assert proc.returncode == 1
    assert "node 'review' is waiting for approval" in proc.stderr
    assert "--approve review=" in proc.stderr


def test_missing_handler_type_exits_2_before_submitting() -> None:
    proc = relaygraph(
        "run", "examples/approval/graph.json", "--handlers", "examples.bug_triage.handlers"
    )
    assert proc.returncode == 2
    assert "no handler for node type(s)" in proc.stderr
    for node_type in ("'writer'", "'reviser'", "'publisher'"):
        assert node_type in proc.stderr
    assert "started" not in proc.stdout  # nothing was submitted


def test_failing_run_exits_1() -> None:
    code, doc, _ = run_json(
        "examples/code_review/graph.json",
        "--handlers",
        "examples.code_review.handlers",
        "--input",
        orjson.dumps({"code": CODE, "quality_threshold": 101}).decode(),
    )
    assert code == 1
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "max_visits" and doc["error"]["node_id"] == "detect"
    assert doc["nodes"]["detect"]["visits"] == 6


def test_handlers_module_that_does_not_import_exits_2() -> None:
    proc = relaygraph("run", "examples/approval/graph.json", "--handlers", "examples.missing")
    assert proc.returncode == 2
    assert "module 'examples.missing' not found" in proc.stderr


def test_timeout_cancels_the_run() -> None:
    proc = relaygraph(
        "run",
        "tests/e2e/blocking_graph.json",
        "--handlers",
        "tests.e2e.blocking_handlers",
        "--timeout",
        "1",
    )
    assert proc.returncode == 1
    assert "did not finish within 1s (cancelled)" in proc.stderr
    assert processes_with(BLOCKING_WORKERS) == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_cleans_up_workers_and_server(signum: int, code: int) -> None:
    proc = subprocess.Popen(
        [
            RELAYGRAPH,
            "run",
            "tests/e2e/blocking_graph.json",
            "--handlers",
            "tests.e2e.blocking_handlers",
        ],
        cwd=ROOT,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        read_until(proc, "started")
        workers = processes_with(BLOCKING_WORKERS)
        assert len(workers) == 2
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert processes_with(BLOCKING_WORKERS) == []
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


# --- server-backed commands against `relaygraph up` ------------------------------------------


@pytest.fixture
def up(redis_url: str) -> Iterator[list[str]]:
    """``relaygraph up`` with the approval handlers; yields the --redis/--prefix flags."""
    flags = ["--redis", redis_url, "--prefix", f"e2e-{secrets.token_hex(4)}"]
    with relaygraph_up(
        [*flags, "--handlers", "examples.approval.handlers", "--workers", "1"]
    ) as banner:
        assert "types" in banner and "writer" in banner
        yield flags


def status(flags: list[str], run_id: str) -> dict[str, Any]:
    proc = relaygraph("status", run_id, "--json", *flags, timeout=30)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = orjson.loads(proc.stdout)
    return doc


def test_commands_against_a_running_deployment(up: list[str]) -> None:
    submitted = relaygraph(
        "submit", "examples/approval/graph.json", "--input", '{"topic": "ops"}', *up
    )
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()

    doc = wait_until_sync(
        lambda: (d := status(up, run_id))["waiting"] and d, timeout=30, message="run waiting"
    )
    assert doc["status"] == "waiting"
    assert doc["waiting"][0]["prompt"]["title"] == "What's new: ops"

    human = relaygraph("status", run_id, *up)
    assert (
        "waiting: review" in human.stdout and f"relaygraph approve {run_id} review" in human.stdout
    )

    # pause and resume: a paused run shows "paused", resuming goes back to waiting
    assert relaygraph("pause", run_id, *up).returncode == 0
    wait_until_sync(lambda: status(up, run_id)["status"] == "paused", timeout=30, message="paused")
    assert relaygraph("resume", run_id, *up).returncode == 0
    wait_until_sync(lambda: status(up, run_id)["status"] == "waiting", timeout=30, message="back")

    approved = relaygraph(
        "approve", run_id, "review", "--data", '{"channel": "news"}', "--actor", "carol", *up
    )
    assert approved.returncode == 0, approved.stderr
    doc = wait_until_sync(
        lambda: (d := status(up, run_id))["status"] == "completed" and d,
        timeout=30,
        message="run completed",
    )
    assert doc["output"]["channel"] == "news" and doc["output"]["approved_by"] == "carol"

    finished = relaygraph("pause", run_id, *up)
    assert finished.returncode == 1 and "it is completed" in finished.stderr

    listed = relaygraph("runs", "--status", "completed", "--json", *up)
    assert [r["run_id"] for r in orjson.loads(listed.stdout)] == [run_id]

    # submit by graph id (registered above), time out waiting, then cancel
    waited = relaygraph("submit", "approval", "--wait", "--timeout", "0.5", "--json", *up)
    assert waited.returncode == 1
    second = orjson.loads(waited.stdout)
    assert second["timed_out"] is True and second["status"] in ("running", "waiting")
    cancelled = relaygraph("cancel", second["run_id"], "--reason", "not today", *up)
    assert cancelled.returncode == 0, cancelled.stderr
    doc = wait_until_sync(
        lambda: (d := status(up, second["run_id"]))["status"] == "cancelled" and d,
        timeout=30,
        message="run cancelled",
    )
    assert doc["error"]["message"] == "not today"

    missing = relaygraph("status", "no-such-run", *up)
    assert missing.returncode == 1 and "not found" in missing.stderr
    not_waiting = relaygraph("approve", run_id, "review", *up)
    assert not_waiting.returncode == 1 and "not waiting" in not_waiting.stderr


def test_plain_redis_publish_with_the_token_from_status_json(up: list[str]) -> None:
    """A service with nothing but a Redis client approves a run: it reads the token from
    ``status --json`` and PUBLISHes the approval; tokenless and wrong-token ones do nothing."""
    import redis as plain_redis  # a plain client: no relaygraph code on this side

    redis_url, prefix = up[1], up[3]
    submitted = relaygraph(
        "submit", "examples/approval/graph.json", "--input", '{"topic": "plain"}', *up
    )
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    doc = wait_until_sync(
        lambda: (d := status(up, run_id))["waiting"] and d, timeout=30, message="run waiting"
    )
    token = doc["waiting"][0]["token"]
    channel = f"{prefix}:approvals"
    client = plain_redis.Redis.from_url(redis_url)
    events = client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(f"{prefix}:events")
    try:
        base = {"run_id": run_id, "node_id": "review", "decision": "approve", "actor": "svc"}
        client.publish(channel, orjson.dumps(base))  # no token
        client.publish(channel, orjson.dumps({**base, "token": "forged"}))
        client.publish(channel, b"{not json")
        history = f"{prefix}:run:{{{run_id}}}:events"
        reasons: list[str] = []

        def both_ignored() -> bool:
            msg = events.get_message(timeout=0.1)
            if msg is not None:
                event = orjson.loads(msg["data"])
                if event["type"] == "event.ignored" and event["run_id"] == run_id:
                    reasons.append(event["data"]["reason"])
            return len(reasons) == 2

        wait_until_sync(both_ignored, timeout=30, message="both bad approvals ignored")
        assert any("no token" in r for r in reasons) and any("wrong token" in r for r in reasons)
        assert client.xlen(f"{prefix}:deadletter") == 1  # the one that was not JSON
        assert status(up, run_id)["status"] == "waiting"
        client.publish(channel, orjson.dumps({**base, "token": token, "data": {"channel": "x"}}))
        done = wait_until_sync(
            lambda: (d := status(up, run_id))["status"] == "completed" and d,
            timeout=30,
            message="run completed",
        )
        types = [history_event(run_id, f)["type"] for _, f in client.xrange(history)]
    finally:
        events.close()
        client.close()
    assert done["output"]["approved_by"] == "svc"
    assert types.count("node.approved") == 1
