"""The web console in a real headless browser: Playwright driving Debian's chromium against
``relaygraph up --api`` (a real server, dispatcher and workers behind it).

A screenshot of every page is saved under build/console-screenshots/ (the test artifacts).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_api_server import APPROVAL_GRAPH, free_port
from tests.e2e.test_examples_cli import ROOT, relaygraph_up
from tests.support.api import KEYS, as_key, keys_document

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = os.environ.get("RELAYGRAPH_TEST_CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "build" / "console-screenshots"
# Flags for a closed network and a root user (docs: the machine's notes on Chromium).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000


def _browser_or_skip() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM} (make browser, or apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: its absence there is a failure
        pytest.skip(message)
    return sync_api


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _browser_or_skip()
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def console(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """``relaygraph up --api`` with the approval example; yields the base URL."""
    keys = tmp_path / "keys.json"
    keys.write_bytes(keys_document())
    port = free_port()
    flags = ["--redis", redis_url, "--prefix", f"ui-{secrets.token_hex(4)}"]
    argv = [*flags, "--handlers", "examples.approval.handlers", "--workers", "1"]
    with relaygraph_up([*argv, "--api", str(port), "--keys", str(keys)]):
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/v1/graphs", json=APPROVAL_GRAPH, headers=as_key("admin"))
        assert r.status_code == 201, r.text
        yield base


def sign_in(browser: Any, base: str, who: str, width: int = 1280) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{base}/")
    assert "/ui/login" in page.url
    page.get_by_label("API key").fill(KEYS[who][0])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/runs")
    return page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def submit(base: str) -> str:
    r = httpx.post(
        f"{base}/v1/runs",
        json={"graph_id": "approval", "input": {"topic": "<b>ops</b>"}},
        headers=as_key("submitter"),
    )
    assert r.status_code == 201, r.text
    run_id: str = r.json()["run_id"]
    return run_id


def test_sign_in_watch_a_run_and_approve_it_without_a_reload(browser: Any, console: str) -> None:
    page = sign_in(browser, console, "approver")
    page.evaluate("window.__noReload = true")  # gone if the page reloads
    shot(page, "runs-empty")

    run_id = submit(console)
    row = page.locator(f'tr[data-run="{run_id}"]')
    row.locator(".badge.st-waiting").wait_for()  # the new run, waiting, in the list
    assert page.evaluate("window.__noReload") is True
    shot(page, "runs")

    row.get_by_role("link", name=run_id).click()
    page.wait_for_url(f"**/ui/runs/{run_id}")
    review = page.locator('svg.graph g.node[data-node="review"]')
    assert "st-waiting" in review.get_attribute("class")
    assert page.locator("#run-status").inner_text() == "waiting"
    prompt = page.locator(".decision .prompt")
    assert "What's new: <b>ops</b>" in prompt.inner_text()  # the input's markup, as text
    assert prompt.locator("b").count() == 0
    shot(page, "run-waiting")

    page.evaluate("window.__noReload = true")
    page.get_by_label("Comment").fill("looks good")
    page.get_by_role("button", name="Approve").click()
    page.locator("#run-status", has_text="completed").wait_for()
    for node in ("start", "draft", "review", "publish", "end"):
        g = page.locator(f'svg.graph g.node[data-node="{node}"]')
        assert "st-completed" in g.get_attribute("class"), node
    assert page.evaluate("window.__noReload") is True
    assert page.locator("form.decide").count() == 0
    shot(page, "run-completed")

    page.goto(f"{console}/ui/approvals")
    shot(page, "approvals")
    page.goto(f"{console}/ui/graphs/approval")
    assert page.locator("svg.graph g.node").count() == len(APPROVAL_GRAPH["nodes"])
    shot(page, "graph")
    page.context.close()


def test_a_viewer_sees_no_approve_button_and_a_forged_post_is_refused(
    browser: Any, console: str
) -> None:
    run_id = submit(console)
    page = sign_in(browser, console, "viewer")
    page.goto(f"{console}/ui/runs/{run_id}")
    page.locator('svg.graph g.node.st-waiting[data-node="review"]').wait_for()
    assert page.get_by_role("button", name="Approve").count() == 0
    assert page.get_by_role("button", name="Cancel run").count() == 0
    assert page.get_by_text("cannot decide").count() == 1
    shot(page, "run-as-viewer")

    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    url = f"{console}/ui/runs/{run_id}/nodes/review/approve"
    forged = page.request.post(url, form={"csrf": csrf, "comment": "sneaky"})
    assert forged.status == 403
    assert "needs the approver role" in forged.json()["detail"]
    no_token = page.request.post(url, form={"comment": "no token"})
    assert no_token.status == 403
    state = httpx.get(f"{console}/v1/runs/{run_id}", headers=as_key("viewer")).json()
    assert state["status"] == "waiting"  # nothing changed
    page.context.close()


def test_a_pasted_invalid_graph_shows_every_problem(browser: Any, console: str) -> None:
    page = sign_in(browser, console, "submitter", width=390)  # a phone's width
    page.goto(f"{console}/ui/graphs")
    broken = {
        "id": "broken",
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "a", "type": "agent", "parent": "start"}],
        "edges": [
            {"source": "start", "target": "a",
             "condition": {"type": "field", "path": "x", "op": "frobnicate", "value": 1}},
            {"source": "a", "target": "ghost"},
        ],
    }  # fmt: skip
    page.get_by_label("Graph JSON").fill(json.dumps(broken, indent=2))
    page.get_by_role("button", name="Validate", exact=True).click()
    problems = page.locator("#validate-result .problems li")
    problems.first.wait_for()
    text = page.locator("#validate-result").inner_text()
    assert problems.count() >= 3, text
    for needle in ("edges[0].condition.op", "'frobnicate'", "nodes[1].parent", "ghost"):
        assert needle in text, (needle, text)
    shot(page, "graphs-invalid")

    page.get_by_label("Graph JSON").fill(json.dumps(APPROVAL_GRAPH | {"id": "pasted"}))
    page.get_by_role("button", name="Validate and register").click()
    page.get_by_text("Registered").wait_for()
    assert httpx.get(f"{console}/v1/graphs/pasted", headers=as_key("viewer")).status_code == 200
    page.context.close()
