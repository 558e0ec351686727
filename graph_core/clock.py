"""The one place for time and ids, so tests can control them."""

from __future__ import annotations

import secrets
import time
import uuid

__all__ = ["new_run_id", "new_token", "now"]


def now() -> float:
    """Wall-clock time in epoch seconds."""
    return time.time()


def new_run_id() -> str:
    """A time-ordered, URL- and key-safe run id (no braces, no colons)."""
    return f"{int(time.time() * 1000):013x}{uuid.uuid4().hex[:12]}"


def new_token() -> str:
    """A random, unguessable wait token."""
    return secrets.token_urlsafe(24)
