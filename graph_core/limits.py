"""Fleet-wide limits: per queue (``queue:<name>``) and per node type (``type:<name>``), a
``max_running`` (jobs running at once across every worker process) and a ``rate`` (a token
bucket: N per second, minute or hour, holding at most ``burst`` tokens). They live in Redis
(``<prefix>:limits``), change at runtime, and are enforced atomically by the workers' claim
script (worker/waking.py): a job held back stays queued, shows ``throttled`` in the run
view, and is claimed once a slot frees (a finishing job wakes one) or a token comes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from graph_core.errors import RelaygraphError

__all__ = ["MAX_RUNNING", "Limit", "LimitError", "check", "parse_rate", "parse_scope"]

MAX_RUNNING: Final = 100_000
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER: Final = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_NAME = re.compile(r"^[^\s|]{1,200}$")


class LimitError(RelaygraphError):
    pass


@dataclass(frozen=True)
class Limit:
    """One scope's limits (None: no such limit)."""

    max_running: int | None = None
    rate: float | None = None  # tokens per second
    burst: float | None = None  # the bucket's size (default: one token)

    def encode(self) -> str:
        """``max_running|rate|burst`` (empty where unset): what the claim script parses."""

        def text(v: float | None) -> str:
            return "" if v is None else repr(float(v)) if isinstance(v, float) else str(v)

        return f"{text(self.max_running)}|{text(self.rate)}|{text(self.burst)}"

    @classmethod
    def decode(cls, raw: str) -> Limit:
        parts = [*raw.split("|"), "", "", ""][:3]
        return cls(
            max_running=int(parts[0]) if parts[0] else None,
            rate=float(parts[1]) if parts[1] else None,
            burst=float(parts[2]) if parts[2] else None,
        )

    def describe(self) -> str:
        said = []
        if self.max_running is not None:
            said.append(f"max_running {self.max_running}")
        if self.rate is not None:
            per_min = self.rate * 60
            shown = f"{self.rate:g}/s" if self.rate >= 1 else f"{per_min:g}/min"
            said.append(f"rate {shown}" + (f" (burst {self.burst:g})" if self.burst else ""))
        return ", ".join(said) or "none"


def parse_scope(text: str) -> str:
    """``queue:NAME``, ``type:NAME``, or a bare queue name; ``LimitError`` otherwise."""
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = "queue", text
    if kind not in ("queue", "type") or not _NAME.match(name):
        raise LimitError(
            f"scope {text!r}: give a queue name, queue:NAME or type:NAME (no spaces or '|')"
        )
    return f"{kind}:{name}"


def parse_rate(text: str) -> float:
    """``"60/min"``, ``"20/s"``, ``"100/hour"`` in tokens per second."""
    m = _RATE.match(text)
    if m is None:
        raise LimitError(f"rate {text!r}: give N/s, N/min or N/hour (e.g. 60/min)")
    per = _PER.get(m.group(2), 3600)
    rate = float(m.group(1)) / per
    if not math.isfinite(rate) or rate <= 0:
        raise LimitError(f"rate {text!r} must be more than 0")
    return rate


def check(limit: Limit) -> Limit:
    """``limit``, or ``LimitError`` naming what is out of range."""
    if limit.max_running is not None and not 1 <= limit.max_running <= MAX_RUNNING:
        raise LimitError(f"max_running must be from 1 to {MAX_RUNNING}, got {limit.max_running}")
    if limit.burst is not None and (limit.rate is None or limit.burst < 1):
        raise LimitError("burst needs a rate and must be at least 1")
    return limit
