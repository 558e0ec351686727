"""The handlers relaygraph's workers run in the benchmark (``--handlers bench.handlers``)."""

from __future__ import annotations

import time
from typing import Any

from worker import HandlerRegistry, NodeContext

__all__ = ["registry"]

registry = HandlerRegistry()


@registry.handler("tick")
async def tick(ctx: NodeContext) -> dict[str, Any]:
    """Does nothing but say when it started (hop latency) and which visit it is (loops)."""
    return {"t": time.time(), "i": ctx.visit}


@registry.handler("make_items")
async def make_items(ctx: NodeContext) -> list[int]:
    """The list a ``map`` node runs over: ``0 .. input.n - 1``."""
    return list(range(ctx.input["n"]))
