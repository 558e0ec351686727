"""The console over HTTP in process: sign-in and its cookie, CSRF on every POST, role
checks on actions, pages for unknown runs and graphs, and the console without keys."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.test_api import echo_graph, open_graph
from tests.support.api import KEYS, as_key, in_process_api

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_api(redis_url) as client:
        for doc in (echo_graph(), open_graph()):
            assert (await client.post("/v1/graphs", json=doc, headers=as_key("admin"))).is_success
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found, html[:300]
    return found.group(1)


async def sign_in(api: httpx.AsyncClient, who: str) -> str:
    """Sign in as ``who``; return the page's CSRF token."""
    page = await api.get("/ui/login")
    token = csrf_of(page.text)
    r = await api.post("/ui/login", data={"key": KEYS[who][0], "csrf": token, "next": "/ui/runs"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/runs"
    cookie = r.headers["set-cookie"]
    assert "relaygraph_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    return token


async def test_pages_need_a_session_and_sign_in_sets_it(api: httpx.AsyncClient) -> None:
    r = await api.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/runs"
    r = await api.get("/ui/runs")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")

    page = await api.get("/ui/login")
    token = csrf_of(page.text)
    wrong = await api.post("/ui/login", data={"key": "rg_nope", "csrf": token})
    assert wrong.status_code == 401 and "Unknown API key" in wrong.text
    no_csrf = await api.post("/ui/login", data={"key": KEYS["viewer"][0]})
    assert no_csrf.status_code == 403
    evil_next = await api.post(
        "/ui/login", data={"key": KEYS["viewer"][0], "csrf": token, "next": "https://evil.example/"}
    )
    assert evil_next.headers["location"] == "/ui/runs"  # never an open redirect

    await sign_in(api, "viewer")
    runs = await api.get("/ui/runs")
    assert runs.status_code == 200 and "viewer · viewer" in runs.text
    assert (await api.get("/ui/runs?fragment=1")).text.lstrip().startswith('<ul class="counts"')
    missing = await api.get("/ui/runs/no-such-run")
    assert missing.status_code == 404 and "not found" in missing.text
    assert (await api.get("/ui/graphs/nope")).status_code == 404
    assert (await api.get("/ui/graphs/echo")).status_code == 200

    out = await api.post("/ui/logout", data={"csrf": token})
    assert out.status_code == 303
    assert (await api.get("/ui/runs")).status_code == 303


async def test_actions_check_csrf_and_roles(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/runs", json={"graph_id": "echo"}, headers=as_key("admin"))
    run_id = r.json()["run_id"]  # pending: no engine runs here
    token = await sign_in(api, "viewer")
    cancel = f"/ui/runs/{run_id}/cancel"
    assert (await api.post(cancel, data={})).status_code == 403  # no CSRF token
    assert (await api.post(cancel, data={"csrf": "x" * 43})).status_code == 403  # a wrong one
    as_viewer = await api.post(cancel, data={"csrf": token})
    assert as_viewer.status_code == 403 and "submitter role" in as_viewer.json()["detail"]

    token = await sign_in(api, "submitter")
    ok = await api.post(cancel, headers={"X-CSRF-Token": token})
    assert ok.status_code == 202
    bad = await api.post("/ui/graphs", data={"csrf": token, "graph": "{nope"})
    assert "not valid JSON" in bad.text
    registered = await api.post(
        "/ui/graphs",
        data={"csrf": token, "graph": '{"id": "tiny", "nodes": [{"id": "start", "type": "start"}, '
              '{"id": "end", "type": "end"}], "edges": [{"source": "start", "target": "end"}]}',
              "register": "1"},
    )  # fmt: skip
    assert "Registered" in registered.text
    assert (await api.get("/v1/graphs/tiny", headers=as_key("viewer"))).status_code == 200


async def test_without_keys_the_console_needs_no_sign_in(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with in_process_api(redis_url, keys=False) as api:
        login = await api.get("/ui/login")
        assert login.status_code == 303 and login.headers["location"] == "/ui/runs"
        page = await api.get("/ui/runs")
        assert page.status_code == 200 and "anonymous" in page.text


async def test_bad_input_to_the_console_is_never_a_500(api: httpx.AsyncClient) -> None:
    token = await sign_in(api, "admin")
    assert (await api.get("/ui/runs?cursor=%C2%B2:x")).status_code == 200  # '²' is a digit
    assert (await api.get("/ui/runs?cursor=" + "9" * 5000 + ":x")).status_code == 200
    assert (await api.get("/ui/runs/no-such-run/events")).status_code == 404
    r = await api.post("/v1/runs", json={"graph_id": "open"}, headers=as_key("admin"))
    run_id = r.json()["run_id"]
    long = await api.post(
        f"/ui/runs/{run_id}/nodes/check/approve", data={"csrf": token, "comment": "x" * 5000}
    )
    assert long.status_code == 422 and "4096" in long.json()["detail"]


async def test_run_operations_from_the_console(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/runs", json={"graph_id": "echo"}, headers=as_key("admin"))
    run_id = r.json()["run_id"]  # pending: no engine runs here, so it stays pending
    token = await sign_in(api, "submitter")
    paused = await api.post(f"/ui/runs/{run_id}/pause", data={"csrf": token})
    assert paused.status_code == 202 and paused.json()["message"] == "pause requested by submitter"
    not_paused = await api.post(f"/ui/runs/{run_id}/resume", data={"csrf": token})
    assert not_paused.status_code == 409  # the pause is queued; the run is still pending
    assert "only a paused run resumes" in not_paused.json()["detail"]
    not_failed = await api.post(f"/ui/runs/{run_id}/retry", data={"csrf": token})
    assert not_failed.status_code == 409
    unknown = await api.post(f"/ui/runs/{run_id}/explode", data={"csrf": token})
    assert unknown.status_code == 404 and "pause" in unknown.json()["detail"]
    token = await sign_in(api, "viewer")
    denied = await api.post(f"/ui/runs/{run_id}/pause", data={"csrf": token})
    assert denied.status_code == 403
