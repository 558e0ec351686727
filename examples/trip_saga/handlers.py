"""Handlers for the trip saga: a fake booking service (no network).

``book`` reserves what its node's ``config.what`` names and returns a confirmation; it
refuses whatever the run input lists in ``sold_out`` (``["car"]``: the car step fails,
after its retries, and the run undoes the hotel, then the flight). ``cancel_booking``
undoes one booking: it gets the booking's confirmation as ``ctx.original_output``. A
compensation may run more than once (at least once, like any job), so cancelling keys on
the confirmation and is idempotent in a real service.
"""

from __future__ import annotations

import hashlib
from typing import Any

from relaygraph import HandlerRegistry, NodeContext, NonRetryableError

registry = HandlerRegistry()


@registry.handler("book")
def book(ctx: NodeContext) -> dict[str, Any]:
    what, city = ctx.config["what"], ctx.config["to"]
    sold_out = ctx.input.get("sold_out", []) if isinstance(ctx.input, dict) else []
    if what in sold_out:
        raise RuntimeError(f"no {what} left in {city}")
    code = hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:8].upper()
    return {"confirmation": f"{what.upper()}-{code}", "city": city}


@registry.handler("cancel_booking")
def cancel_booking(ctx: NodeContext) -> dict[str, Any]:
    booking = ctx.original_output
    if not isinstance(booking, dict) or "confirmation" not in booking:
        raise NonRetryableError(f"nothing to cancel: {booking!r}")
    return {"cancelled": booking["confirmation"], "what": ctx.config["what"]}
