"""README's code blocks, run as a user would: its graph and its handlers module written to a
fresh directory, ``relaygraph run`` on them, and its Python client block against a real
deployment (``relaygraph up`` on a server of its own). They use only ``relaygraph`` imports
(tests/unit/test_public_api.py checks that)."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.test_api_server import free_port
from tests.e2e.test_examples_cli import RELAYGRAPH, ROOT, cli_env, relaygraph_up
from tests.support.servers import ServerFactory
from tests.support.waiting import wait_until_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
README_URL = "redis://localhost:6379/0"


def _block(lang: str, marker: str) -> str:
    found = [body for kind, body in BLOCKS if kind == lang and marker in body]
    assert len(found) == 1, f"README has {len(found)} {lang} blocks containing {marker!r}"
    return found[0]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """README's graph.json and myapp/handlers.py, exactly as printed."""
    graph = _block("json", '"id": "bug-triage"')
    orjson.loads(graph)  # the block is the whole file
    (tmp_path / "graph.json").write_text(graph)
    handlers = _block("python", "# myapp/handlers.py")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "handlers.py").write_text(handlers)
    return tmp_path


def _env(app: Path) -> dict[str, str]:
    return {**cli_env(), "PYTHONPATH": str(app)}


def test_the_readme_run_command(app_dir: Path) -> None:
    line = next(
        ln
        for ln in _block("sh", "relaygraph run graph.json").splitlines()
        if ln.startswith("relaygraph run graph.json")
    )
    argv = [RELAYGRAPH, *line.split()[1:6], '{"title": "checkout is down"}', "--json"]
    proc = subprocess.run(
        argv,
        cwd=app_dir,
        env=_env(app_dir),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    view = orjson.loads(proc.stdout)
    assert view["status"] == "completed"
    assert view["nodes"]["escalate"]["output"] == {"sent": "checkout is down"}
    assert view["nodes"]["assign"]["status"] == "skipped"


@pytest.fixture
def deployment(app_dir: Path, server_factory: ServerFactory) -> Iterator[str]:
    """``relaygraph up`` with README's handlers on a server of its own; yields its URL."""
    server = server_factory()
    argv = ["--redis", server.url, "--handlers", "myapp.handlers"]
    with relaygraph_up(argv, cwd=app_dir, env=_env(app_dir)):
        yield server.url


def test_the_readme_client_block(app_dir: Path, deployment: str) -> None:
    source = _block("python", "WorkflowClient.from_url")
    assert README_URL in source
    code = compile(
        source.replace(README_URL, deployment),
        "README.md",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
    )
    namespace: dict[str, Any] = {}
    cwd = os.getcwd()
    os.chdir(app_dir)  # the block registers "graph.json" from the current directory
    try:
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    finally:
        os.chdir(cwd)
    view = namespace["view"]
    assert view.status == "completed"
    assert view.nodes["triage"].output == {"severity": "critical", "summary": "checkout is down"}
    assert view.nodes["escalate"].output == {"sent": "checkout is down"}
    assert namespace["run_id"] == view.run_id


def _commands(block: str) -> list[str]:
    """The block's shell commands, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [ln.split("  #")[0].strip() for ln in joined.splitlines() if ln and ln[0] != "#"]


def test_the_readme_service_block(server_factory: ServerFactory, tmp_path: Path) -> None:
    commands = _commands(_block("sh", "relaygraph api-key"))
    keygen = next(c for c in commands if c.startswith("relaygraph api-key"))
    made = subprocess.run(
        [RELAYGRAPH, *keygen.split()[1:]], capture_output=True, text=True, timeout=60, check=True
    )
    lines = made.stdout.splitlines()
    key = lines[0].removeprefix("key: ")
    (tmp_path / "keys.json").write_bytes(orjson.dumps({"keys": [orjson.loads(lines[-1])]}))

    up = next(c for c in commands if c.startswith("relaygraph up"))
    port = str(free_port())
    argv = up.split()[2:]  # after `relaygraph up`
    argv[argv.index("8080")] = port
    argv[argv.index("keys.json")] = str(tmp_path / "keys.json")
    server = server_factory()
    with relaygraph_up(["--redis", server.url, *argv]):
        api = f"http://127.0.0.1:{port}"
        shell_vars = next(c for c in commands if c.startswith("API="))
        assert shell_vars.startswith("API=http://127.0.0.1:8080 AUTH=")
        env = {**cli_env(), "KEY": key, "API": api, "AUTH": f"Authorization: Bearer {key}"}

        def curl(marker: str) -> str:
            (command,) = [c for c in commands if c.startswith("curl") and marker in c]
            proc = subprocess.run(
                ["bash", "-c", command],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return proc.stdout

        assert orjson.loads(curl("/v1/graphs")) == {"graph_id": "approval", "version": 1}
        assert orjson.loads(curl("/v1/runs -H"))["run_id"] == "post-1"

        def waiting() -> bool:
            inbox = orjson.loads(curl("/v1/approvals"))["approvals"]
            return [(a["run_id"], a["node_id"]) for a in inbox] == [("post-1", "review")]

        wait_until_sync(waiting, timeout=30, message="post-1 waiting in the approvals inbox")
        approved = orjson.loads(curl("/approve"))
        assert approved["actor"] == "alice" and approved["decision"] == "approve"
        events = [ln for ln in curl("/events").splitlines() if ln.startswith("event: ")]
        assert events[0] == "event: run.submitted" and events[-1] == "event: run.completed"
        run = orjson.loads(curl("/v1/runs/post-1 -H"))
        assert run["status"] == "completed"
        assert run["nodes"]["review"]["output"]["comment"] == "ship it"
