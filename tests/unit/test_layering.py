"""graph_core is pure: importing it must not import Redis, arq, asyncio I/O or the runtime."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN_FOR_CORE = ("redis", "arq", "fakeredis", "dispatcher", "worker", "asyncio", "socket")
# At runtime the stdlib itself loads socket (email.utils, via pydantic), so check the rest.
FORBIDDEN_LOADED = ("redis", "arq", "fakeredis", "dispatcher", "worker", "asyncio")


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
