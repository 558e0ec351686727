"""The HTTP API as it is deployed: ``relaygraph api`` (uvicorn) in subprocesses, in front of
``relaygraph up``, driven over HTTP only with httpx. The whole approval flow with the event
stream, a reconnect with Last-Event-ID, two API processes sharing one deployment, and Redis
going away under a running API."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_examples_cli import RELAYGRAPH, ROOT, cli_env, read_until, relaygraph_up
from tests.support.api import as_key, keys_document
from tests.support.servers import ServerFactory
from tests.support.waiting import wait_until_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPROVAL_GRAPH = json.loads((ROOT / "examples/approval/graph.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def api_process(
    flags: list[str], keys_file: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``relaygraph api`` on a free port until the block ends (``env``: settings to add);
    yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [RELAYGRAPH, "api", *flags, "--port", str(port), "--keys", str(keys_file)],
        cwd=ROOT,
        env={**cli_env(), **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        read_until(proc, "relaygraph api: listening", timeout=30)
        yield f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_bytes(keys_document())
    return path


@pytest.fixture
def deployment(redis_url: str) -> Iterator[list[str]]:
    """``relaygraph up`` with the approval example's handlers; yields --redis/--prefix."""
    flags = ["--redis", redis_url, "--prefix", f"api-{secrets.token_hex(4)}"]
    with relaygraph_up([*flags, "--handlers", "examples.approval.handlers", "--workers", "1"]):
        yield flags


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The events of an SSE response: {"id", "event", "data"} each (comments skipped)."""
    frame: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            frame[field] = json.loads(value) if field == "data" else value


def start_run(base: str) -> str:
    r = httpx.post(
        f"{base}/v1/graphs", json=APPROVAL_GRAPH, headers=as_key("submitter"), timeout=10
    )
    assert r.status_code in (200, 201), r.text
    r = httpx.post(
        f"{base}/v1/runs",
        json={"graph_id": "approval", "input": {"topic": "ops"}},
        headers=as_key("submitter"),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    run_id: str = r.json()["run_id"]
    return run_id


def test_the_whole_flow_over_http_with_the_event_stream(
    deployment: list[str], keys_file: Path
) -> None:
    with api_process(deployment, keys_file) as base:
        run_id = start_run(base)
        url = f"{base}/v1/runs/{run_id}/events"
        first: list[dict[str, Any]] = []
        with httpx.stream("GET", url, headers=as_key("viewer"), timeout=30) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for event in sse(r):
                first.append(event)
                if event["event"] == "node.waiting":
                    break  # disconnect mid-run
        kinds = [e["event"] for e in first]
        assert kinds[0] == "run.submitted" and kinds[-1] == "node.waiting"
        assert first[-1]["data"]["node_id"] == "review" and first[-1]["data"]["run_id"] == run_id

        approve = f"{base}/v1/runs/{run_id}/nodes/review/approve"
        denied = httpx.post(approve, headers=as_key("viewer"), timeout=10)
        assert denied.status_code == 403
        r = httpx.post(approve, json={"comment": "ship it"}, headers=as_key("approver"), timeout=10)
        assert r.status_code == 202, r.text

        # Reconnect after the last event seen: exactly the rest, ending with the run's end.
        headers = {**as_key("viewer"), "Last-Event-ID": first[-1]["id"]}
        with httpx.stream("GET", url, headers=headers, timeout=30) as r:
            rest = list(sse(r))  # the server ends the stream after the terminal event
        assert [e["event"] for e in rest][-1] == "run.completed"
        assert (
            rest[0]["event"] == "node.approved" and rest[0]["data"]["data"]["actor"] == "approver"
        )

        # Replayed from the start, the stream is the seen part and the rest, without a seam.
        with httpx.stream("GET", url, headers=as_key("viewer"), timeout=30) as r:
            whole = list(sse(r))
        assert [e["id"] for e in whole] == [e["id"] for e in first + rest]
        assert len({e["id"] for e in whole}) == len(whole)

        status = httpx.get(f"{base}/v1/runs/{run_id}", headers=as_key("viewer"), timeout=10)
        assert status.json()["status"] == "completed"
        assert status.json()["nodes"]["review"]["output"]["comment"] == "ship it"


def test_a_stream_opened_before_the_run_moves_follows_it_live(
    deployment: list[str], keys_file: Path
) -> None:
    with api_process(deployment, keys_file) as base:
        run_id = start_run(base)
        url = f"{base}/v1/runs/{run_id}/events"
        approve = f"{base}/v1/runs/{run_id}/nodes/review/approve"
        seen: list[str] = []
        with httpx.stream("GET", url, headers=as_key("viewer"), timeout=30) as r:
            for event in sse(r):
                seen.append(event["event"])
                if event["event"] == "node.waiting":
                    ok = httpx.post(approve, headers=as_key("admin"), timeout=10)
                    assert ok.status_code == 202
        assert seen[-1] == "run.completed" and seen.count("node.waiting") == 1


def test_two_api_processes_share_one_deployment(deployment: list[str], keys_file: Path) -> None:
    with api_process(deployment, keys_file) as one, api_process(deployment, keys_file) as two:
        run_id = start_run(one)
        listed = httpx.get(f"{two}/v1/runs", headers=as_key("viewer"), timeout=10).json()
        assert run_id in [r["run_id"] for r in listed["runs"]]

        def inbox() -> bool:
            r = httpx.get(f"{two}/v1/approvals", headers=as_key("approver"), timeout=10)
            return any(a["run_id"] == run_id for a in r.json()["approvals"])

        wait_until_sync(inbox, timeout=30, message="the run in the second API's inbox")
        approve = f"{two}/v1/runs/{run_id}/nodes/review/approve"
        assert httpx.post(approve, headers=as_key("approver"), timeout=10).status_code == 202
        with httpx.stream(
            "GET", f"{two}/v1/runs/{run_id}/events", headers=as_key("viewer"), timeout=30
        ) as r:
            kinds = [e["event"] for e in sse(r)]
        assert kinds[-1] == "run.completed"
        final = httpx.get(f"{one}/v1/runs/{run_id}", headers=as_key("viewer"), timeout=10)
        assert final.json()["status"] == "completed"


def test_redis_away_is_503_within_the_timeout_and_back_is_200(
    server_factory: ServerFactory, keys_file: Path
) -> None:
    server = server_factory(appendonly=True)
    flags = ["--redis", server.url, "--prefix", "gone"]
    with api_process(flags, keys_file, {"RELAYGRAPH_API_REDIS_TIMEOUT_S": "1"}) as base:
        runs = f"{base}/v1/runs"
        assert httpx.get(runs, headers=as_key("viewer"), timeout=10).status_code == 200

        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # Redis hangs mid-request: the timeout must answer
        try:
            began = time.monotonic()
            r = httpx.get(runs, headers=as_key("viewer"), timeout=30)
            took = time.monotonic() - began
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == "urn:relaygraph:problem:redis-unavailable"
            assert took < 10, took
            ready = httpx.get(f"{base}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["redis"] is False
        finally:
            os.kill(pid, signal.SIGCONT)

        server.kill()  # gone: connections refused
        r = httpx.get(runs, headers=as_key("viewer"), timeout=30)
        assert r.status_code == 503 and "Traceback" not in r.text
        server.restart()

        def back() -> bool:
            return httpx.get(runs, headers=as_key("viewer"), timeout=10).status_code == 200

        wait_until_sync(back, timeout=30, message="the API answers 200 again")


def test_without_keys_the_api_refuses_a_public_address(redis_url: str) -> None:
    proc = subprocess.run(
        [RELAYGRAPH, "api", "--redis", redis_url, "--host", "0.0.0.0", "--port", "1"],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "no API keys: refusing to listen on 0.0.0.0" in proc.stderr


def test_up_with_api_serves_the_deployment(redis_url: str, keys_file: Path) -> None:
    port = free_port()
    flags = ["--redis", redis_url, "--prefix", f"upapi-{secrets.token_hex(4)}"]
    argv = [*flags, "--handlers", "examples.approval.handlers", "--workers", "1"]
    with relaygraph_up([*argv, "--api", str(port), "--keys", str(keys_file)]) as banner:
        base = f"http://127.0.0.1:{port}"
        assert f"API on {base}" in banner
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["dispatchers"] >= 1 and "default" in ready.json()["queues"]
        run_id = start_run(base)
        approve = f"{base}/v1/runs/{run_id}/nodes/review/approve"

        def approved() -> bool:
            return httpx.post(approve, headers=as_key("approver"), timeout=10).status_code == 202

        wait_until_sync(approved, timeout=30, message="the review node approved")
        with httpx.stream(
            "GET", f"{base}/v1/runs/{run_id}/events", headers=as_key("viewer"), timeout=30
        ) as r:
            assert [e["event"] for e in sse(r)][-1] == "run.completed"
    with pytest.raises(httpx.ConnectError):  # `up` stopped its API too
        httpx.get(f"{base}/healthz", timeout=5)
