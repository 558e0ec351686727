"""The HTTP API against its own OpenAPI document, with schemathesis.

schemathesis sends every operation of the app's document generated requests, valid and
invalid, in a bounded and deterministic number, through the ASGI app itself (its lifespan
running, on the session's real server). No answer may be a 5xx, and every answer's status,
content type and body must be ones the document declares for that operation.

First, through the API with a dispatcher running: graphs, and runs that are waiting,
completed, failed, cancelled and queued. Their ids are the generated ids about half the
time, so the routes answer with real data and not only with 404s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import schemathesis
from fastapi import FastAPI
from schemathesis import BaseSchema, Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.model import Graph, Node
from relaygraph.api import ApiKeys, ApiSettings, create_app
from relaygraph.api.problems import PROBLEM_JSON, problem_type
from tests.support.api import as_key, in_process_api, keys_document
from tests.support.layout import SHARDS, client_for
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

CHECKS: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,  # a request the document rules out is refused (4xx)
]
# Fuzzed requests per operation (the examples and coverage phases add the few the document
# implies): enough to find shape bugs, few enough for the module to take seconds.
MAX_EXAMPLES: Final = 20
KEYS_DOC: Final = keys_document().decode()
# The event streams answer until their run ends (/v1/runs/{id}/events) or for ever
# (/v1/events), with a heartbeat every 15 s: a generated request would hang until its
# timeout. tests/e2e/test_api_server.py follows them over HTTP instead.
SSE_PATHS: Final = ["/v1/runs/{run_id}/events", "/v1/events"]
# served without a key (a webhook call is signed with its trigger's secret instead)
OPEN_PATHS: Final = ["/healthz", "/readyz", "/metrics", "/v1/hooks/{graph_id}/{trigger_id}"]

GRAPH_IDS: Final = ["gated", "quick", "queued"]
NODE_IDS: Final = ["review", "start", "work"]
# run id -> (graph, input, the status it is left in)
RUNS: Final[dict[str, tuple[str, Any, str]]] = {
    "seed-waiting": ("gated", {"what": "v2"}, "waiting"),
    "seed-failed": ("gated", None, "failed"),  # its prompt needs input.what
    "seed-completed": ("quick", None, "completed"),
    "seed-queued": ("queued", None, "running"),
    "seed-cancelled": ("queued", None, "cancelled"),
}


def _graphs() -> list[Graph]:
    gated = Graph(id="gated").add_nodes(
        Node("start", type="start"),
        Node("review", type="human", config={"prompt": "ship {{input.what}}?"}),
        Node("end", type="end"),
    )
    quick = Graph(id="quick").add_nodes(Node("start", type="start"), Node("end", type="end"))
    # No worker serves "work": a run of this graph stays queued (and so can be cancelled).
    queued = Graph(id="queued").add_nodes(
        Node("start", type="start"), Node("work", type="work"), Node("end", type="end")
    )
    return [
        gated.connect("start", "review", "end").validate_graph(),
        quick.connect("start", "end").validate_graph(),
        queued.connect("start", "work", "end").validate_graph(),
    ]


def _app(redis_url: str) -> FastAPI:
    return create_app(
        ApiSettings(shards=SHARDS, redis_url=redis_url, api_keys=KEYS_DOC),
        ApiKeys.load(KEYS_DOC, None),
    )


def _config(headers: dict[str, str]) -> schemathesis.Config:
    """Both generation modes, a bounded deterministic number of cases, ``headers`` on every
    request, and the seeded ids for about half of the ids generated."""
    real = {"probability": 0.5}
    return schemathesis.Config.from_dict(
        {
            "headers": headers,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # the key is the one in ``headers``: no generated ones beside it
                "with-security-parameters": False,
            },
            "dictionaries": {
                "graph_ids": {"values": GRAPH_IDS},
                "run_ids": {"values": list(RUNS)},
                "node_ids": {"values": NODE_IDS},
            },
            "parameters": {
                "path.graph_id": {"dictionary": "graph_ids", **real},
                "body.graph_id": {"dictionary": "graph_ids", **real},
                "path.run_id": {"dictionary": "run_ids", **real},
                "query.run_id": {"dictionary": "run_ids", **real},
                "path.node_id": {"dictionary": "node_ids", **real},
            },
            "operations": [
                {
                    # 503 is /readyz's documented answer while no dispatcher reads the
                    # inbox (none does here); its body is still checked against Ready.
                    "include-path": "/readyz",
                    "checks": {
                        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}
                    },
                }
            ],
        }
    )


# The app's OpenAPI document, which does not depend on its settings: made at import, with
# no server yet, for pytest to collect one test per operation. The app under test serves
# this same document at /openapi.json (test_the_document_is_the_one_served).
DOCUMENT: Final = _app("redis://127.0.0.1:1").openapi()


def _schema(headers: dict[str, str]) -> BaseSchema:
    schema = schemathesis.openapi.from_dict(DOCUMENT, config=_config(headers))
    return schema.exclude(path=SSE_PATHS)


as_admin = _schema(as_key("admin"))
without_key = _schema({}).exclude(path=OPEN_PATHS)


@pytest.fixture(scope="module")
async def app(redis_url: str) -> AsyncIterator[FastAPI]:
    """The app under test, on a server holding the seeded graphs and runs. schemathesis
    starts its lifespan on first use and ends it after each test."""
    client = client_for(redis_url)
    await client.flushall()
    try:
        await _seed(client, redis_url)
        yield _app(redis_url)
    finally:
        await client.flushall()  # what the requests made too: leave the server as found
        await client.aclose()


async def _seed(client: aioredis.Redis, redis_url: str) -> None:
    """Make the graphs and runs through the API with a dispatcher running, then stop it
    and take it out of the inbox group: nothing changes the runs while schemathesis sends
    its requests, and /readyz answers the same every time (not ready)."""
    settings = DispatcherSettings(shards=SHARDS, redis_url=redis_url)
    dispatcher = Dispatcher(client, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    admin = as_key("admin")
    try:
        await wait_for(dispatcher.ready.is_set, message="dispatcher ready")
        async with in_process_api(redis_url) as api:
            for graph in _graphs():
                r = await api.post("/v1/graphs", json=graph.to_dict(), headers=admin)
                assert r.status_code == 201, r.text
            for run_id, (graph_id, input, status) in RUNS.items():
                body = {"graph_id": graph_id, "input": input, "run_id": run_id}
                r = await api.post("/v1/runs", json=body, headers=admin)
                assert r.status_code == 201, r.text
                if status == "cancelled":
                    await _reach(api, run_id, "running")
                    r = await api.post(f"/v1/runs/{run_id}/cancel", headers=admin)
                    assert r.status_code == 202, r.text
                await _reach(api, run_id, status)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        for k in range(max(1, settings.keys.shards)):  # one server: the inbox
            await client.xgroup_delconsumer(
                settings.keys.shard(k).inbox, settings.keys.inbox_group, dispatcher.consumer
            )


async def _reach(api: httpx.AsyncClient, run_id: str, status: str) -> None:
    async def reached() -> bool:
        got = await api.get(f"/v1/runs/{run_id}", headers=as_key("admin"))
        return bool(got.json()["status"] == status)

    await wait_for(reached, timeout=15, message=f"run {run_id} {status}")


async def test_the_document_is_the_one_served(app: FastAPI) -> None:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api,
    ):
        served = (await api.get("/openapi.json")).json()
    assert served == orjson.loads(orjson.dumps(DOCUMENT))
    # Every error is a problem document, and the document says so: no FastAPI default left.
    assert "HTTPValidationError" not in served["components"]["schemas"]


@as_admin.parametrize()
def test_api_as_admin_matches_its_schema(case: Case[Any], app: FastAPI) -> None:
    case.call_and_validate(app=app, checks=CHECKS)


@without_key.parametrize()
def test_api_without_a_key_is_401_everywhere(case: Case[Any], app: FastAPI) -> None:
    """Without a key every request is 401, but for what is refused before the key is
    looked at: a method the path does not have (405), and a body that is not JSON at all
    (FastAPI decodes it before it runs any dependency: 400 or 422)."""
    response = case.call_and_validate(app=app, checks=CHECKS)
    assert response.headers["content-type"] == [PROBLEM_JSON], response.text
    doc = response.json()
    if case.method.upper() != case.operation.method.upper():
        assert doc["type"] == problem_type("method-not-allowed"), doc
    elif response.status_code in (400, 422):
        assert doc["type"] in (problem_type("unreadable-body"), problem_type("invalid-body"))
        assert all(p["message"].startswith("is not valid JSON") for p in doc.get("problems", []))
    else:
        assert doc["type"] == problem_type("unauthorized"), doc
        assert response.headers["www-authenticate"] == ["Bearer"]
