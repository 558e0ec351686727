"""The event loop relaygraph's processes run on: uvloop where it is installed (a dependency
off Windows), asyncio's own otherwise. A worker spends a good part of each job in the
event loop's machinery (scheduling callbacks, timeouts, socket readiness); uvloop's costs
a fraction of asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_loop"]

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it can be imported."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or a trimmed install
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
