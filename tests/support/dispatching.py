"""An in-process dispatcher for a test, served until the block ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dispatcher.service import Dispatcher
from tests.support.waiting import wait_for


@asynccontextmanager
async def serving(d: Dispatcher) -> AsyncIterator[Dispatcher]:
    """Run ``d`` until the block ends (it is ready when the block starts)."""
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    await wait_for(d.ready.is_set, message="dispatcher ready")
    try:
        yield d
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
