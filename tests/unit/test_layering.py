"""The layers: graph_core is pure (no Redis, arq, asyncio I/O or runtime); worker and dispatcher
never import each other; relaygraph, the front door, may import all three and none of them
imports it."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN_FOR_CORE = (
    "redis", "arq", "fakeredis", "dispatcher", "worker", "relaygraph", "asyncio", "socket"
)  # fmt: skip
# At runtime the stdlib itself loads socket (email.utils, via pydantic), so check the rest.
FORBIDDEN_LOADED = ("redis", "arq", "fakeredis", "dispatcher", "worker", "relaygraph", "asyncio")


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update((path.name, a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((path.name, node.module.split(".")[0]))
    return found


def test_graph_core_source_imports_nothing_of_the_runtime() -> None:
    bad = sorted((f, m) for f, m in _imports("graph_core") if m in FORBIDDEN_FOR_CORE)
    assert bad == []


def test_importing_graph_core_loads_no_runtime_module() -> None:
    code = (
        "import sys, graph_core, graph_core.engine, graph_core.messages, graph_core.keys;"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_LOADED!r}];"
        "print(','.join(sorted(bad)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_worker_and_dispatcher_do_not_import_each_other() -> None:
    assert not [m for _, m in _imports("worker") if m == "dispatcher"]
    assert not [m for _, m in _imports("dispatcher") if m == "worker"]


def test_no_engine_package_imports_the_front_door() -> None:
    for package in ("graph_core", "dispatcher", "worker"):
        assert [f for f, m in _imports(package) if m == "relaygraph"] == [], package


def test_the_front_door_imports_only_the_engine_and_libraries() -> None:
    local = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    used = {m for _, m in _imports("relaygraph")} & local
    assert used <= {"graph_core", "dispatcher", "worker", "relaygraph"}
    # every engine package is reachable from the front door
    assert {"graph_core", "dispatcher", "worker"} <= used


def test_importing_the_front_door_stays_light() -> None:
    """``import relaygraph`` in a handler module must not pull in Redis or arq: its names are
    imported when first used."""
    code = (
        "import sys, relaygraph;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('redis', 'arq', 'dispatcher')];"
        "print(','.join(sorted(bad)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
