"""The HTTP API in process (httpx on the ASGI app) against a real server, an in-process
dispatcher and worker: graphs, runs, pagination, approvals with approver lists, the auth
matrix, problem documents, body limits and metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.conditions import Condition as C
from graph_core.events import HISTORY_FIELDS, HistoryEvent, history_values
from graph_core.model import Edge, Graph, Node
from relaygraph.api.events import _read_after
from tests.support.api import ROLES, as_key, in_process_api
from tests.support.layout import SHARDS, client_for, keys_for
from tests.support.waiting import wait_for
from worker.app import serve
from worker.context import NodeContext, NonRetryableError
from worker.registry import HandlerRegistry
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def echo_graph() -> dict[str, Any]:
    g = Graph(id="echo").add_nodes(
        Node("start", type="start"), Node("shout", type="shout"), Node("end", type="end")
    )
    return g.connect("start", "shout", "end").validate_graph().to_dict()


def gated_graph() -> dict[str, Any]:
    """start -> review (human, approvers alice and the admin role) -> ok / no -> end."""
    g = Graph(id="gated").add_nodes(
        Node("start", type="start"),
        Node(
            "review",
            type="human",
            config={"prompt": "ship {{input.what}}?", "approvers": ["alice", "admin"]},
        ),
        Node("ok", type="shout"),
        Node("no", type="shout"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "review"),
        Edge("review", "ok", condition=C.field("review.output.decision").eq("approve")),
        Edge("review", "no", condition=C.otherwise()),
        Edge("ok", "end"),
        Edge("no", "end"),
    )
    return g.validate_graph().to_dict()


def open_graph() -> dict[str, Any]:
    """start -> check (human, any approver) -> end."""
    g = Graph(id="open").add_nodes(
        Node("start", type="start"), Node("check", type="human"), Node("end", type="end")
    )
    return g.connect("start", "check", "end").validate_graph().to_dict()


def handlers() -> HandlerRegistry:
    reg = HandlerRegistry()

    @reg.handler("shout")
    def shout(ctx: NodeContext) -> dict[str, Any]:
        text = ctx.input.get("text", "") if isinstance(ctx.input, dict) else ""
        return {"text": text.upper()}

    @reg.handler("once")
    def fails_the_first_time(ctx: NodeContext) -> dict[str, Any]:
        if ctx.run_id not in FAILED_ONCE:  # per run: the first visit fails for good
            FAILED_ONCE.add(ctx.run_id)
            raise NonRetryableError("the first visit always fails")
        return {"visit": ctx.visit}

    return reg


FAILED_ONCE: set[str] = set()


@pytest.fixture
async def engine(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[None]:
    """A dispatcher and a worker in this process (after ``redis`` flushed the server)."""
    client = client_for(redis_url)
    dispatcher = Dispatcher(client, DispatcherSettings(shards=SHARDS, redis_url=redis_url))
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await wait_for(dispatcher.ready.is_set, message="dispatcher ready")
    worker = asyncio.create_task(
        serve(
            WorkerSettings(shards=SHARDS, redis_url=redis_url, poll_delay=0.01),
            handlers(),
            grace_s=0,
        )
    )
    yield
    worker.cancel()
    await asyncio.wait_for(asyncio.gather(worker, return_exceptions=True), timeout=20)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    await client.aclose()


@pytest.fixture
async def api(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_api(redis_url) as client:
        for doc in (echo_graph(), gated_graph(), open_graph()):
            r = await client.post("/v1/graphs", json=doc, headers=as_key("admin"))
            assert r.status_code == 201, r.text
        yield client


async def run_status(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    r = await api.get(f"/v1/runs/{run_id}", headers=as_key("viewer"))
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def until(api: httpx.AsyncClient, run_id: str, what: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        doc = await run_status(api, run_id)
        if what == "waiting":
            return doc if doc["waiting"] else None
        return doc if doc["status"] == what else None

    found: dict[str, Any] = await wait_for(check, timeout=15, message=f"run {run_id} {what}")
    return found


def problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    doc: dict[str, Any] = r.json()
    assert doc["type"] == f"urn:relaygraph:problem:{slug}"
    assert doc["status"] == status and doc["title"] and doc["detail"]
    return doc


# --- runs ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
async def test_submit_follow_and_idempotency(api: httpx.AsyncClient) -> None:
    body = {"graph_id": "echo", "input": {"text": "hi"}, "idempotency_key": "order-1"}
    r = await api.post("/v1/runs", json=body, headers=as_key("submitter"))
    assert r.status_code == 201, r.text
    run = r.json()
    assert r.headers["location"] == f"/v1/runs/{run['run_id']}"
    assert run["graph_id"] == "echo" and run["graph_version"] == 1

    again = await api.post("/v1/runs", json=body, headers=as_key("submitter"))
    assert again.status_code == 200 and again.json()["run_id"] == run["run_id"]

    done = await until(api, run["run_id"], "completed")
    assert done["output"] == {"text": "HI"}
    history = await api.get(f"/v1/runs/{run['run_id']}/history", headers=as_key("viewer"))
    events = [s["event"] for s in history.json()["steps"]]
    assert events[0] == "run.submitted" and events[-1] == "run.completed"
    steps = history.json()["steps"]
    shout = next(s for s in steps if s["event"] == "node.completed" and s["node_id"] == "shout")
    assert shout["keys_changed"] == ["shout.output.text"] and shout["visit"] == 1

    cancel = await api.post(f"/v1/runs/{run['run_id']}/cancel", headers=as_key("submitter"))
    assert "already completed" in problem(cancel, 409, "run-finished")["detail"]


async def test_seed_001_routes(api: httpx.AsyncClient, engine: None) -> None:
    doc = echo_graph() | {"id": "echo-legacy"}
    created = await api.post("/graph/create", json=doc, headers=as_key("submitter"))
    assert created.status_code == 201 and created.json() == {
        "graph_id": "echo-legacy",
        "version": 1,
    }
    r = await api.post(
        "/graph/run",
        json={"graph_id": "echo-legacy", "input": {"text": "x"}},
        headers=as_key("submitter"),
    )
    assert r.status_code == 201 and set(r.json()) == {"run_id"}
    run_id = r.json()["run_id"]

    async def state() -> dict[str, Any] | None:
        s = await api.get(f"/graph/state/{run_id}", headers=as_key("viewer"))
        return s.json() if s.json()["status"] == "completed" else None

    final = await wait_for(state, timeout=15, message="legacy run completed")
    assert final["output"] == {"text": "X"}


async def test_list_runs_pages_stay_stable_while_runs_arrive(api: httpx.AsyncClient) -> None:
    # No engine: the runs stay pending, which is all a listing needs.
    ids = []
    for i in range(7):
        r = await api.post(
            "/v1/runs", json={"graph_id": "echo", "input": {"i": i}}, headers=as_key("submitter")
        )
        ids.append(r.json()["run_id"])
    newest_first = ids[::-1]
    seen: list[str] = []
    page = (await api.get("/v1/runs?limit=3", headers=as_key("viewer"))).json()
    seen += [r["run_id"] for r in page["runs"]]
    for _ in range(3):  # new runs between pages must not shift the pages
        await api.post("/v1/runs", json={"graph_id": "echo"}, headers=as_key("submitter"))
    while page["next_cursor"]:
        page = (
            await api.get(
                f"/v1/runs?limit=3&cursor={page['next_cursor']}", headers=as_key("viewer")
            )
        ).json()
        seen += [r["run_id"] for r in page["runs"]]
    assert seen == newest_first

    by_graph = await api.get("/v1/runs?graph_id=open", headers=as_key("viewer"))
    assert by_graph.json() == {"runs": [], "next_cursor": None}
    pending = await api.get("/v1/runs?status=pending&limit=500", headers=as_key("viewer"))
    assert len(pending.json()["runs"]) == 10
    bad = await api.get("/v1/runs?status=sleeping", headers=as_key("viewer"))
    assert problem(bad, 422, "invalid-body")["problems"][0]["path"] == "query.status"
    bad_cursor = await api.get("/v1/runs?cursor=!!!", headers=as_key("viewer"))
    problem(bad_cursor, 422, "invalid-cursor")


# --- approvals -----------------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
async def test_approver_lists_and_the_actor(api: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    r = await api.post(
        "/v1/runs", json={"graph_id": "gated", "input": {"what": "v2"}}, headers=as_key("admin")
    )
    run_id = r.json()["run_id"]
    waiting = await until(api, run_id, "waiting")
    assert waiting["waiting"][0]["node_id"] == "review"
    assert "token" not in waiting["waiting"][0]  # the API keeps the token

    inbox = await api.get("/v1/approvals", headers=as_key("bob"))
    (item,) = inbox.json()["approvals"]
    assert item["run_id"] == run_id and item["prompt"] == "ship v2?"
    assert item["approvers"] == ["alice", "admin"] and item["may_decide"] is False
    alice_inbox = await api.get("/v1/approvals", headers=as_key("alice"))
    assert alice_inbox.json()["approvals"][0]["may_decide"] is True

    history = keys_for().run(run_id).events
    history_before = await redis.xlen(history)
    url = f"/v1/runs/{run_id}/nodes/review/approve"
    denied = await api.post(url, json={"comment": "lgtm"}, headers=as_key("bob"))
    assert "not among node 'review'" in problem(denied, 403, "not-an-approver")["detail"]
    assert await redis.xlen(history) == history_before
    assert (await run_status(api, run_id))["waiting"]  # nothing changed

    ok = await api.post(url, json={"comment": "lgtm", "data": {"n": 1}}, headers=as_key("alice"))
    assert ok.status_code == 202, ok.text
    assert ok.json() == {
        "run_id": run_id,
        "node_id": "review",
        "visit": 1,
        "decision": "approve",
        "actor": "alice",
    }
    done = await until(api, run_id, "completed")
    assert done["nodes"]["review"]["output"] == {
        "decision": "approve",
        "data": {"n": 1},
        "actor": "alice",
        "comment": "lgtm",
    }
    assert done["nodes"]["ok"]["status"] == "completed"
    again = await api.post(url, headers=as_key("alice"))
    problem(again, 409, "run-finished")


@pytest.mark.usefixtures("engine")
async def test_decisions_on_nodes_that_do_not_wait(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/runs", json={"graph_id": "open"}, headers=as_key("submitter"))
    run_id = r.json()["run_id"]
    await until(api, run_id, "waiting")
    base = f"/v1/runs/{run_id}/nodes"
    problem(
        await api.post(f"{base}/nope/approve", headers=as_key("approver")), 404, "node-not-found"
    )
    problem(
        await api.post(f"{base}/end/approve", headers=as_key("approver")), 409, "node-not-waiting"
    )
    problem(
        await api.post("/v1/runs/no-such-run/nodes/check/approve", headers=as_key("approver")),
        404,
        "run-not-found",
    )
    problem(
        await api.post("/v1/runs/bad%20id/cancel", headers=as_key("admin")), 404, "run-not-found"
    )
    bad = await api.post(f"{base}/check/reject", json={"data": [1]}, headers=as_key("approver"))
    assert problem(bad, 422, "invalid-body")["problems"][0]["path"] == "body.data"

    rejected = await api.post(f"{base}/check/reject", json={}, headers=as_key("approver"))
    assert rejected.status_code == 202 and rejected.json()["actor"] == "approver"
    done = await until(api, run_id, "completed")
    assert done["nodes"]["check"]["output"]["decision"] == "reject"


# --- graphs --------------------------------------------------------------------------------


async def test_graph_routes(api: httpx.AsyncClient) -> None:
    viewer = as_key("viewer")
    listed = await api.get("/v1/graphs", headers=viewer)
    assert [g["graph_id"] for g in listed.json()["graphs"]] == ["echo", "gated", "open"]
    v2 = echo_graph() | {"version": 2, "name": "echo two"}
    assert (await api.post("/v1/graphs", json=v2, headers=as_key("submitter"))).status_code == 201
    assert (await api.get("/v1/graphs/echo/versions", headers=viewer)).json() == {
        "graph_id": "echo",
        "versions": [1, 2],
    }
    assert (await api.get("/v1/graphs/echo", headers=viewer)).json()["version"] == 2
    assert (await api.get("/v1/graphs/echo?version=1", headers=viewer)).json()["version"] == 1
    problem(await api.get("/v1/graphs/nope", headers=viewer), 404, "graph-not-found")
    problem(await api.get("/v1/graphs/nope/versions", headers=viewer), 404, "graph-not-found")
    clash = echo_graph() | {"name": "different content, same version"}
    problem(await api.post("/v1/graphs", json=clash, headers=as_key("admin")), 409, "conflict")

    mermaid = await api.get("/v1/graphs/echo/export", headers=viewer)
    assert mermaid.text.startswith("flowchart TD") and "shout" in mermaid.text
    dot = await api.get("/v1/graphs/echo/export?format=dot", headers=viewer)
    assert dot.text.startswith("digraph")
    bad_format = await api.get("/v1/graphs/echo/export?format=png", headers=viewer)
    assert problem(bad_format, 422, "invalid-body")["problems"][0]["path"] == "query.format"


async def test_validation_lists_every_problem(api: httpx.AsyncClient) -> None:
    broken = {
        "id": "broken",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "a", "type": "agent", "parent": "start"},
            {"id": "end", "type": "end"},
        ],
        "edges": [
            {"source": "start", "target": "a",
             "condition": {"type": "field", "path": "x", "op": "frobnicate", "value": 1}},
            {"source": "a", "target": "ghost"},
        ],
    }  # fmt: skip
    for path in ("/v1/graphs/validate", "/v1/graphs"):
        r = await api.post(path, json=broken, headers=as_key("admin"))
        doc = problem(r, 422, "invalid-graph")
        paths = {p["path"] for p in doc["problems"]}
        assert {"edges[0].condition.op", "nodes[1].parent"} <= paths, doc
        assert any("ghost" in p["message"] for p in doc["problems"]), doc
        assert any("'frobnicate'" in p["message"] for p in doc["problems"]), doc
    ok = await api.post("/v1/graphs/validate", json=echo_graph(), headers=as_key("viewer"))
    assert ok.status_code == 200 and ok.json() == {"graph_id": "echo", "version": 1}
    problem(await api.get("/v1/graphs/broken", headers=as_key("viewer")), 404, "graph-not-found")


# --- auth ----------------------------------------------------------------------------------

WHO = (None, "wrong", *ROLES)
# (method, path, body, the least role allowed); {run} is a waiting run of "open"
ENDPOINTS: list[tuple[str, str, Any, str]] = [
    ("GET", "/v1/graphs", None, "viewer"),
    ("GET", "/v1/graphs/echo", None, "viewer"),
    ("GET", "/v1/graphs/echo/versions", None, "viewer"),
    ("GET", "/v1/graphs/echo/export", None, "viewer"),
    ("POST", "/v1/graphs/validate", "echo", "viewer"),
    ("POST", "/v1/graphs", "echo", "submitter"),
    ("POST", "/graph/create", "echo", "submitter"),
    ("GET", "/v1/runs", None, "viewer"),
    ("GET", "/v1/runs/{run}", None, "viewer"),
    ("GET", "/graph/state/{run}", None, "viewer"),
    ("GET", "/v1/runs/{run}/history", None, "viewer"),
    ("GET", "/v1/approvals", None, "viewer"),
    ("POST", "/v1/runs", {"graph_id": "echo"}, "submitter"),
    ("POST", "/graph/run", {"graph_id": "echo"}, "submitter"),
    ("POST", "/v1/runs/{run}/nodes/check/reject", {}, "approver"),
    ("POST", "/v1/runs/{run}/cancel", None, "submitter"),
]
OK = {"GET": 200, "POST": 202}
CREATED = {("POST", p) for p in ("/v1/graphs", "/graph/create", "/v1/runs", "/graph/run")}


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize(("method", "path", "body", "least"), ENDPOINTS)
async def test_auth_matrix(
    api: httpx.AsyncClient, method: str, path: str, body: Any, least: str
) -> None:
    for who in WHO:
        run_id = ""
        if "{run}" in path:  # a fresh waiting run for each caller: a decision acts once
            r = await api.post("/v1/runs", json={"graph_id": "open"}, headers=as_key("admin"))
            run_id = r.json()["run_id"]
            await until(api, run_id, "waiting")
        payload = echo_graph() if body == "echo" else body
        r = await api.request(method, path.format(run=run_id), json=payload, headers=as_key(who))
        if who is None or who == "wrong":
            problem(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        elif ROLES.index(who) < ROLES.index(least):
            assert f"needs the {least} role" in problem(r, 403, "forbidden")["detail"]
        else:
            expected = (
                201
                if (method, path) in CREATED
                else (200 if path == "/v1/graphs/validate" else OK[method])
            )
            assert r.status_code == expected, (who, r.text)


async def test_open_endpoints_and_problem_documents(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/openapi.json")).json()["info"]["title"] == "relaygraph"
    assert (await api.get("/docs")).status_code == 200
    problem(await api.get("/v1/nothing-here", headers=as_key("viewer")), 404, "not-found")
    problem(await api.delete("/v1/graphs", headers=as_key("admin")), 405, "method-not-allowed")
    not_json = await api.post(
        "/v1/runs",
        content=b"{nope",
        headers={**as_key("admin"), "content-type": "application/json"},
    )
    problem(not_json, 422, "invalid-body")
    missing = await api.post("/v1/runs", json={"input": 1}, headers=as_key("admin"))
    doc = problem(missing, 422, "invalid-body")
    assert doc["problems"] == [{"path": "body.graph_id", "message": "is required"}]
    extra = await api.post(
        "/v1/runs", json={"graph_id": "echo", "inptu": 1}, headers=as_key("admin")
    )
    assert problem(extra, 422, "invalid-body")["problems"][0]["path"] == "body.inptu"
    unknown = await api.post("/v1/runs", json={"graph_id": "nope"}, headers=as_key("admin"))
    problem(unknown, 404, "graph-not-found")


async def test_body_over_the_limit_is_413(redis: aioredis.Redis, redis_url: str) -> None:
    async with in_process_api(redis_url, api_max_body_bytes=2048) as api:
        big = {"graph_id": "echo", "input": {"blob": "x" * 4096}}
        r = await api.post("/v1/runs", json=big, headers=as_key("admin"))
        problem(r, 413, "body-too-large")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b" " * 1024

        chunked = await api.post("/v1/runs", content=chunks(), headers=as_key("admin"))
        problem(chunked, 413, "body-too-large")


async def test_without_keys_everyone_is_anonymous_admin(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with in_process_api(redis_url, keys=False) as api:
        r = await api.post("/v1/graphs", json=open_graph())
        assert r.status_code == 201
        assert (await api.get("/v1/graphs")).status_code == 200


@pytest.mark.usefixtures("engine")
async def test_metrics_count_requests_and_runs(api: httpx.AsyncClient) -> None:
    n = 5
    for i in range(n):
        r = await api.post("/v1/runs", json={"graph_id": "echo", "input": {"text": str(i)}},
                           headers=as_key("submitter"))  # fmt: skip
        assert r.status_code == 201
    text = (await api.get("/metrics")).text
    assert f'relaygraph_api_runs_submitted_total{{graph="echo"}} {float(n)}' in text
    assert (
        f'relaygraph_api_requests_total{{method="POST",route="/v1/runs",status="201"}} {float(n)}'
        in text
    )
    assert 'relaygraph_api_request_duration_seconds_count{method="POST",route="/v1/runs"}' in text
    assert "relaygraph_fleet_scrape_ok 1.0" in text


# --- edges found in review ----------------------------------------------------------------


@pytest.mark.usefixtures("engine")
async def test_resuming_a_stream_after_the_runs_end_is_204(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/runs", json={"graph_id": "echo"}, headers=as_key("submitter"))
    run_id = r.json()["run_id"]
    await until(api, run_id, "completed")
    url = f"/v1/runs/{run_id}/events"
    whole = await api.get(url, headers=as_key("viewer"))  # the run is over: replay, then end
    ids = [ln[4:] for ln in whole.text.splitlines() if ln.startswith("id: ")]
    assert whole.status_code == 200 and "event: run.completed" in whole.text
    after_end = await api.get(url, headers={**as_key("viewer"), "Last-Event-ID": ids[-1]})
    assert after_end.status_code == 204
    before_end = await api.get(url, headers={**as_key("viewer"), "Last-Event-ID": ids[-2]})
    assert before_end.status_code == 200 and before_end.text.count("id: ") == 1
    huge = await api.get(f"{url}?after=99999999999999999999-0", headers=as_key("viewer"))
    problem(huge, 422, "invalid-event-id")


async def test_a_graph_that_cannot_be_stored_as_json_is_422(api: httpx.AsyncClient) -> None:
    doc = echo_graph() | {"id": "big"}
    doc["nodes"][1]["config"] = {"n": 2**70}
    body = json.dumps(doc).encode()  # Python writes the big integer; orjson cannot store it
    headers = {**as_key("admin"), "content-type": "application/json"}
    for path in ("/v1/graphs", "/v1/graphs/validate"):
        r = await api.post(path, content=body, headers=headers)
        assert "64-bit" in problem(r, 422, "invalid-graph")["problems"][0]["message"]


async def test_without_keys_only_loopback_hosts_and_json_posts(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with in_process_api(redis_url, keys=False) as api:
        assert (await api.post("/v1/graphs", json=open_graph())).status_code == 201
        rebound = await api.get("/v1/graphs", headers={"Host": "attacker.example"})
        assert rebound.status_code == 400
        r = await api.post("/v1/runs", json={"graph_id": "open"})
        form = await api.post(
            f"/v1/runs/{r.json()['run_id']}/cancel",
            content=b"x=1",
            headers={"content-type": "text/plain", "origin": "https://attacker.example"},
        )
        problem(form, 415, "json-required")


async def test_a_500_is_counted_and_is_a_problem(api: httpx.AsyncClient) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    app = api._transport.app  # type: ignore[attr-defined]
    app.state.ctx.client.store.graph_ids = broken
    # as a server would: the app's error answer, not the exception
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as raw:
        r = await raw.get("/v1/graphs", headers=as_key("viewer"))
    assert r.status_code == 500 and "Traceback" not in r.text
    assert r.json()["type"] == "urn:relaygraph:problem:internal"
    metrics = (await api.get("/metrics")).text
    assert (
        'relaygraph_api_requests_total{method="GET",route="/v1/graphs",status="500"} 1.0' in metrics
    )


def test_role_names_in_approvers_are_roles_not_key_names() -> None:
    from relaygraph.api.auth import Principal, Role

    named_admin = Principal("admin", frozenset({Role.APPROVER}))  # a key *named* admin
    assert not named_admin.matches(["admin"])
    assert named_admin.matches(["approver"])
    assert Principal("root", frozenset({Role.ADMIN})).matches(["admin"])
    assert Principal("alice", frozenset({Role.APPROVER})).matches(["alice"])


@pytest.mark.usefixtures("engine")
async def test_graph_and_node_ids_with_a_slash(api: httpx.AsyncClient) -> None:
    g = Graph(id="team/deploy").add_nodes(
        Node("start", type="start"), Node("ok/go?", type="human"), Node("end", type="end")
    )
    doc = g.connect("start", "ok/go?", "end").validate_graph().to_dict()
    assert (await api.post("/v1/graphs", json=doc, headers=as_key("admin"))).status_code == 201
    viewer = as_key("viewer")
    assert (await api.get("/v1/graphs/team/deploy", headers=viewer)).json()["id"] == "team/deploy"
    versions = await api.get("/v1/graphs/team/deploy/versions", headers=viewer)
    assert versions.json() == {"graph_id": "team/deploy", "versions": [1]}
    assert "ok/go?" in (await api.get("/v1/graphs/team%2Fdeploy/export", headers=viewer)).text
    r = await api.post("/v1/runs", json={"graph_id": "team/deploy"}, headers=as_key("admin"))
    run_id = r.json()["run_id"]
    await until(api, run_id, "waiting")
    ok = await api.post(f"/v1/runs/{run_id}/nodes/ok/go%3F/approve", headers=as_key("approver"))
    assert ok.status_code == 202, ok.text
    assert ok.json()["node_id"] == "ok/go?"
    await until(api, run_id, "completed")


def gate_graph() -> dict[str, Any]:
    """start -> check (human) -> shout -> end."""
    g = Graph(id="gate").add_nodes(
        Node("start", type="start"),
        Node("check", type="human"),
        Node("shout", type="shout"),
        Node("end", type="end"),
    )
    return g.connect("start", "check", "shout", "end").validate_graph().to_dict()


@pytest.mark.usefixtures("engine")
async def test_pause_holds_new_work_and_resume_goes_on(api: httpx.AsyncClient) -> None:
    admin = as_key("admin")
    assert (await api.post("/v1/graphs", json=gate_graph(), headers=admin)).status_code == 201
    r = await api.post(
        "/v1/runs", json={"graph_id": "gate", "input": {"text": "go"}}, headers=admin
    )
    run_id = r.json()["run_id"]
    await until(api, run_id, "waiting")
    viewer_pause = await api.post(f"/v1/runs/{run_id}/pause", headers=as_key("viewer"))
    problem(viewer_pause, 403, "forbidden")
    paused = await api.post(f"/v1/runs/{run_id}/pause", headers=as_key("submitter"))
    assert paused.status_code == 202, paused.text
    await until(api, run_id, "paused")
    problem(await api.post(f"/v1/runs/{run_id}/pause", headers=admin), 409, "run-state")

    # an approval while paused is applied; the worker node after it is held, not started
    ok = await api.post(f"/v1/runs/{run_id}/nodes/check/approve", headers=as_key("approver"))
    assert ok.status_code == 202

    async def held() -> dict[str, Any] | None:
        doc = await run_status(api, run_id)
        return doc if doc["nodes"]["shout"]["status"] == "held" else None

    doc = await wait_for(held, timeout=15, message="shout held while paused")
    assert doc["status"] == "paused" and doc["nodes"]["check"]["status"] == "completed"

    resumed = await api.post(f"/v1/runs/{run_id}/resume", headers=as_key("submitter"))
    assert resumed.status_code == 202
    done = await until(api, run_id, "completed")
    assert done["output"] == {"text": "GO"}
    problem(await api.post(f"/v1/runs/{run_id}/resume", headers=admin), 409, "run-state")
    steps = (await api.get(f"/v1/runs/{run_id}/history", headers=as_key("viewer"))).json()
    events = [s["event"] for s in steps["steps"]]
    assert {"run.paused", "node.held", "run.resumed"} <= set(events)


@pytest.mark.usefixtures("engine")
async def test_retry_goes_on_from_the_failed_node(api: httpx.AsyncClient) -> None:
    g = Graph(id="flaky").add_nodes(
        Node("start", type="start"),
        Node("first", type="shout"),
        Node("second", type="once"),
        Node("end", type="end"),
    )
    doc = g.connect("start", "first", "second", "end").validate_graph().to_dict()
    admin = as_key("admin")
    assert (await api.post("/v1/graphs", json=doc, headers=admin)).status_code == 201
    r = await api.post(
        "/v1/runs", json={"graph_id": "flaky", "input": {"text": "a"}}, headers=admin
    )
    run_id = r.json()["run_id"]
    failed = await until(api, run_id, "failed")
    assert failed["nodes"]["second"]["status"] == "failed"
    problem(await api.post(f"/v1/runs/{run_id}/resume", headers=admin), 409, "run-state")

    retried = await api.post(f"/v1/runs/{run_id}/retry", headers=as_key("submitter"))
    assert retried.status_code == 202, retried.text
    done = await until(api, run_id, "completed")
    assert done["output"] == {"visit": 2} and done["nodes"]["first"]["visits"] == 1
    problem(await api.post(f"/v1/runs/{run_id}/retry", headers=admin), 409, "run-state")
    ttl = await api._transport.app.state.ctx.redis.ttl(keys_for().run(run_id).meta)  # type: ignore[attr-defined]
    assert ttl > 0  # finished again: its retention applies again


@pytest.mark.usefixtures("engine")
async def test_an_output_schema_violation_fails_the_node_naming_the_path(
    api: httpx.AsyncClient,
) -> None:
    schema = {"type": "object", "properties": {"text": {"type": "integer"}}}
    g = Graph(id="typed").add_nodes(
        Node("start", type="start"),
        Node("shout", type="shout", output_schema=schema),
        Node("end", type="end"),
    )
    doc = g.connect("start", "shout", "end").validate_graph().to_dict()
    admin = as_key("admin")
    assert (await api.post("/v1/graphs", json=doc, headers=admin)).status_code == 201
    r = await api.post(
        "/v1/runs", json={"graph_id": "typed", "input": {"text": "x"}}, headers=admin
    )
    failed = await until(api, r.json()["run_id"], "failed")
    error = failed["nodes"]["shout"]["error"]
    assert (
        error["code"] == "schema_violation"
        and "$.text: 'X' is not of type 'integer'" in error["message"]
    )
    bad = doc | {"id": "badly-typed"}
    bad["nodes"][1]["output_schema"] = {"type": "nope"}
    problems = problem(await api.post("/v1/graphs", json=bad, headers=admin), 422, "invalid-graph")
    assert problems["problems"][0]["path"] == "nodes[1].output_schema"


@pytest.mark.usefixtures("engine")
async def test_a_child_runs_wait_is_listed_and_decided_through_the_parent(
    api: httpx.AsyncClient,
) -> None:
    """A subgraph's child waits at gated's review: the parent's view lists it with the
    child's run id, and deciding through the parent's id goes to the child, checked
    against the child graph's approvers."""
    parent = Graph(id="wrapper").add_nodes(
        Node("start", type="start"),
        Node("inner", type="subgraph", config={"graph": "gated", "input": {"what": "v3"}}),
        Node("end", type="end"),
    )
    doc = parent.connect("start", "inner", "end").validate_graph().to_dict()
    assert (await api.post("/v1/graphs", json=doc, headers=as_key("admin"))).status_code == 201
    r = await api.post("/v1/runs", json={"graph_id": "wrapper"}, headers=as_key("submitter"))
    run_id = r.json()["run_id"]
    waiting = await until(api, run_id, "waiting")
    (wait,) = waiting["waiting"]
    child = wait["run_id"]
    assert wait["node_id"] == "review" and child and child != run_id
    assert waiting["status"] == "running"  # the parent itself waits for no one
    url = f"/v1/runs/{run_id}/nodes/review/approve"
    denied = await api.post(url, headers=as_key("bob"))
    assert "not among node 'review'" in problem(denied, 403, "not-an-approver")["detail"]
    ok = await api.post(url, headers=as_key("alice"))
    assert ok.status_code == 202, ok.text
    assert ok.json()["run_id"] == child
    done = await until(api, run_id, "completed")
    assert done["output"] == {"text": ""}
    child_doc = await run_status(api, child)
    assert child_doc["status"] == "completed"
    assert child_doc["nodes"]["review"]["output"]["actor"] == "alice"


@pytest.mark.usefixtures("engine")
async def test_rerun_from_a_node_with_a_new_input(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/v1/runs", json={"graph_id": "echo", "input": {"text": "a"}}, headers=as_key("submitter")
    )
    run_id = r.json()["run_id"]
    first = await until(api, run_id, "completed")
    assert first["output"] == {"text": "A"}
    url = f"/v1/runs/{run_id}/rerun"
    unknown = await api.post(url, json={"from_node": "nope"}, headers=as_key("submitter"))
    assert "no node 'nope'" in problem(unknown, 422, "invalid-input")["detail"]
    denied = await api.post(url, json={"from_node": "shout"}, headers=as_key("viewer"))
    assert denied.status_code == 403
    ok = await api.post(
        url, json={"from_node": "shout", "input": {"text": "b"}}, headers=as_key("submitter")
    )
    assert ok.status_code == 202, ok.text

    async def again() -> dict[str, Any] | None:
        doc = await run_status(api, run_id)
        return doc if doc["status"] == "completed" and doc["output"] == {"text": "B"} else None

    done = await wait_for(again, timeout=15, message="the rerun")
    assert done["nodes"]["shout"]["visits"] == 2 and done["nodes"]["start"]["visits"] == 1
    r = await api.post("/v1/runs", json={"graph_id": "open"}, headers=as_key("submitter"))
    waiting_id = r.json()["run_id"]
    await until(api, waiting_id, "waiting")
    busy = await api.post(
        f"/v1/runs/{waiting_id}/rerun", json={"from_node": "check"}, headers=as_key("submitter")
    )
    assert "it is waiting" in problem(busy, 409, "run-state")["detail"]


async def test_limits_and_triggers_over_http(api: httpx.AsyncClient) -> None:
    body = {"max_running": 3, "rate": "120/min"}
    denied = await api.put("/v1/limits/type:agent", json=body, headers=as_key("submitter"))
    assert denied.status_code == 403
    r = await api.put("/v1/limits/type:agent", json=body, headers=as_key("admin"))
    assert r.status_code == 200, r.text
    assert r.json() == {"scope": "type:agent", "limit": "max_running 3, rate 2/s"}
    shown = (await api.get("/v1/limits", headers=as_key("viewer"))).json()["limits"]
    assert shown["type:agent"]["max_running"] == 3 and shown["type:agent"]["rate_per_s"] == 2
    bad = await api.put("/v1/limits/type:agent", json={"rate": "fast"}, headers=as_key("admin"))
    assert "N/s, N/min or N/hour" in problem(bad, 422, "invalid-limit")["detail"]
    gone = await api.delete("/v1/limits/type:agent", headers=as_key("admin"))
    assert gone.status_code == 200
    again = await api.delete("/v1/limits/type:agent", headers=as_key("admin"))
    problem(again, 404, "limit-not-found")
    triggers = await api.get("/v1/triggers", headers=as_key("viewer"))
    assert triggers.status_code == 200 and triggers.json() == {"triggers": []}


async def test_an_event_stream_reads_both_entry_layouts_and_skips_garbage(
    redis: aioredis.Redis,
) -> None:
    """A run's history may hold entries of the earlier layout (the whole event in field
    ``e``) and, written by hand, entries that are no event: those are skipped, so a client
    resuming after one does not meet it again and again."""
    rk = keys_for("sse-layouts").run("mixed")
    await redis.delete(rk.events)
    old = {"run_id": "mixed", "v": 1, "type": "run.started", "at": 1.5, "data": {}}
    first = (await redis.xadd(rk.events, {"e": json.dumps(old)})).decode()
    bad = (await redis.xadd(rk.events, {"type": "not json"})).decode()
    end = HistoryEvent(type="run.completed", at=2.5)
    last = (
        await redis.xadd(rk.events, dict(zip(HISTORY_FIELDS, history_values(end), strict=True)))
    ).decode()
    frames = [f async for f in _read_after(redis, "mixed", rk.events, "0-0")]
    assert [(entry_id, terminal) for _, entry_id, terminal in frames] == [
        (first, False),
        (last, True),
    ]
    assert b"event: run.completed" in frames[1][0] and bad not in [f[1] for f in frames]
