"""The profile stages name functions that exist: a renamed function must not leave its stage
silently reporting nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.profiles import DISPATCHER_STAGES, Stage

ROOT = Path(__file__).resolve().parents[2]


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


@pytest.mark.parametrize("stage", DISPATCHER_STAGES, ids=[s[0] for s in DISPATCHER_STAGES])
def test_a_dispatcher_stage_names_an_existing_function(stage: Stage) -> None:
    _, suffix, func = stage
    path = ROOT / suffix
    assert path.exists(), f"{suffix} does not exist"
    assert func in _functions(path), f"{suffix} has no function {func}"
