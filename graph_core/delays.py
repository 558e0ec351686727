"""When a ``delay`` node is due: ``{"seconds": N}`` from now, or ``{"until": T}`` with T an
ISO 8601 timestamp (a timestamp without a zone is UTC) or epoch seconds. Pure: the caller
passes the config with its templates rendered and the transition's clock."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["DELAY_KEYS", "delay_due"]

DELAY_KEYS: Final = frozenset({"seconds", "until"})
MAX_DELAY_S: Final = 366 * 24 * 3600 * 100  # a century: anything longer is a mistake


def delay_due(config: dict[str, Any], now: float) -> float:
    """The epoch time the delay ends; ``ValueError`` naming the bad value. A config with
    neither key is no delay (roomkit-graph's ``delay`` does nothing)."""
    if "seconds" in config and "until" in config:
        raise ValueError("a delay takes seconds or until, not both")
    if "seconds" in config:
        seconds = config["seconds"]
        if isinstance(seconds, str):
            try:
                seconds = float(seconds)
            except ValueError:
                raise ValueError(f"seconds must be a number, got {seconds!r}") from None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError(f"seconds must be a number, got {type(seconds).__name__}")
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DELAY_S:
            raise ValueError(f"seconds must be between 0 and {MAX_DELAY_S}, got {seconds!r}")
        return now + float(seconds)
    if "until" in config:
        return _timestamp(config["until"])
    return now


def _timestamp(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"until must be an ISO 8601 timestamp, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"until must be a finite time, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"until must be an ISO 8601 timestamp, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"until must be an ISO 8601 timestamp, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
