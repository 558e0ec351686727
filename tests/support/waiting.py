"""Waiting with deadlines: the only sanctioned way for a test to wait for something.

A test never sleeps a guessed amount and hopes. It names the condition it waits for, polls it
with a short interval, and fails with a message (and the time it waited) at a deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

__all__ = ["wait_for", "wait_until_sync"]

T = TypeVar("T")

Message = str | Callable[[], str]
"""A message, or a callable building one at failure time (to show the state it saw)."""


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    message: Message = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: Message = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: Message = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> object:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Raises AssertionError naming ``message`` and the time waited once ``timeout`` seconds
    pass. Exceptions of the types in ``ignore`` count as "not yet" (e.g. ConnectionError
    while a server restarts); the last one is chained onto the failure.
    """
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        value, error = await _check_async(predicate, ignore)
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(message, time.monotonic() - started, timeout, value) from error
        await asyncio.sleep(min(interval, remaining))


def wait_until_sync(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: Message = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """`wait_for` for synchronous code: poll ``predicate`` until truthy, return its value."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        value: T | None = None
        error: BaseException | None = None
        try:
            value = predicate()
        except ignore as e:
            error = e
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(message, time.monotonic() - started, timeout, value) from error
        time.sleep(min(interval, remaining))


async def _check_async(
    predicate: Callable[[], object], ignore: tuple[type[BaseException], ...]
) -> tuple[object, BaseException | None]:
    try:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
    except ignore as e:
        return None, e
    return value, None


def _timed_out(message: Message, elapsed: float, timeout: float, last: object) -> AssertionError:
    text = message() if callable(message) else message
    return AssertionError(
        f"timed out after {elapsed:.2f}s (timeout {timeout}s) waiting for: {text} "
        f"(last value: {last!r})"
    )
