"""A handler that never finishes on its own, for the Ctrl-C clean-up test."""

from __future__ import annotations

import asyncio

from worker import HandlerRegistry, NodeContext

registry = HandlerRegistry()


@registry.handler("block")
async def block(ctx: NodeContext) -> None:
    await asyncio.Event().wait()  # until the worker is stopped
