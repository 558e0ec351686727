"""worker.loop: the processes' event loop is uvloop's where it is installed."""

from __future__ import annotations

import asyncio

import pytest

from worker.loop import run_loop


def test_run_loop_runs_a_coroutine_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_loop(main()).startswith("uvloop")
    assert isinstance(uvloop.new_event_loop(), asyncio.AbstractEventLoop)
