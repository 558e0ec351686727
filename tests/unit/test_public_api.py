"""The front door: ``relaygraph`` exports every public name, each documented in README's API
section; users' docs and examples import only from it; the old imports keep working; the
package metadata is what an installer and a type checker expect."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import relaygraph

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ("graph_core", "dispatcher", "worker")


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_every_name_in_all_imports() -> None:
    assert len(set(relaygraph.__all__)) == len(relaygraph.__all__)
    for name in relaygraph.__all__:
        assert getattr(relaygraph, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from relaygraph import *", namespace)
    assert set(relaygraph.__all__) <= set(namespace)


def test_names_are_the_engines_own_objects() -> None:
    from dispatcher import SyncWorkflowClient, WorkflowClient
    from graph_core import Graph, RelaygraphError
    from worker import HandlerRegistry, NodeContext, NodeResult

    assert relaygraph.WorkflowClient is WorkflowClient
    assert relaygraph.SyncWorkflowClient is SyncWorkflowClient
    assert relaygraph.HandlerRegistry is HandlerRegistry
    assert relaygraph.NodeContext is NodeContext and relaygraph.NodeResult is NodeResult
    assert relaygraph.Graph is Graph and relaygraph.RelaygraphError is RelaygraphError
    assert relaygraph.ValidationError is relaygraph.GraphValidationError


def test_every_error_has_one_root() -> None:
    """Every error relaygraph raises is a RelaygraphError (NonRetryableError is the user's to
    raise from a handler)."""
    errors = [
        getattr(relaygraph, n)
        for n in relaygraph.__all__
        if n.endswith(("Error", "Found")) and n != "NonRetryableError"
    ]
    errors += [relaygraph.RunExists, relaygraph.NodeNotWaiting, relaygraph.WaitTimeout]
    for cls in errors:
        assert issubclass(cls, relaygraph.RelaygraphError), cls


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = relaygraph.Nope  # type: ignore[attr-defined]


def test_every_public_name_is_documented_in_the_readme_api_section() -> None:
    section = _readme_section("Python API")
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section))
    missing = sorted(set(relaygraph.__all__) - documented)
    assert missing == []


def test_the_version_is_the_distributions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert relaygraph.__version__ == project["version"]
    for argv in (
        [str(Path(sys.executable).parent / "relaygraph"), "--version"],
        [sys.executable, "-m", "relaygraph", "--version"],
    ):
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
        assert out.stdout.strip() == f"relaygraph {project['version']}"


def test_pyproject_metadata() -> None:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = doc["project"]
    assert project["license"] == "MIT"  # an SPDX string: the table form warns at install
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(project["urls"])
    assert "Typing :: Typed" in project["classifiers"]
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # SPDX only
    assert project["scripts"]["relaygraph"] == "relaygraph.cli:main"
    packages = doc["tool"]["setuptools"]["packages"]
    top = {"relaygraph", *ENGINE}
    # every package folder goes into the wheel (setuptools takes only the listed ones)
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for name in top
        for init in (ROOT / name).rglob("__init__.py")
    }
    assert set(packages) == folders
    for package in top:
        assert (ROOT / package / "py.typed").exists(), package
        assert "py.typed" in doc["tool"]["setuptools"]["package-data"][package]
    assert set(doc["tool"]["mypy"]["packages"]) == top


def _user_facing_python() -> list[tuple[str, str]]:
    """(where, source) of every Python snippet a user copies: examples' modules and the
    code blocks of README and docs/."""
    found = [(str(p.relative_to(ROOT)), p.read_text()) for p in (ROOT / "examples").rglob("*.py")]
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", md.read_text(), re.S)):
            found.append((f"{md.relative_to(ROOT)} block {i}", block))
    return found


def test_user_facing_code_imports_only_relaygraph() -> None:
    bad = []
    for where, source in _user_facing_python():
        tree = ast.parse(source.replace("await ", "").replace("async with", "with"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [(where, n) for n in names if n.split(".")[0] in ENGINE]
    assert bad == []


def test_old_engine_imports_keep_working() -> None:
    for module, name in (
        ("dispatcher", "WorkflowClient"),
        ("dispatcher", "SyncWorkflowClient"),
        ("dispatcher", "RunView"),
        ("worker", "HandlerRegistry"),
        ("worker", "NodeContext"),
        ("graph_core", "Graph"),
    ):
        assert getattr(importlib.import_module(module), name) is getattr(relaygraph, name)
