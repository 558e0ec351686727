"""Handlers for the history and export tests: a loop that counts, then a node that fails."""

from __future__ import annotations

from typing import Any

from relaygraph import HandlerRegistry, NodeContext

registry = HandlerRegistry()


@registry.handler("count")
def count(ctx: NodeContext) -> dict[str, Any]:
    return {"n": ctx.visit, "unit": "visits"}  # `unit` is the same on every visit


@registry.handler("explode")
def explode(ctx: NodeContext) -> None:
    raise ValueError(f"exploded on attempt {ctx.attempt}")
