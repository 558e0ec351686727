"""Triggers that start runs: ``scheduled`` (a cron expression in a time zone), ``event`` (a
named event, with an optional filter over its data) and ``webhook`` (an HTTP call signed with
a shared secret). ``manual`` starts nothing by itself. Pure: what is declared, when a
schedule is due, whether an event matches; the dispatcher, the client and the API fire them.

A graph declares ``trigger`` (one, roomkit-graph's field) and ``triggers`` (a list); each has
an ``id`` (default: its type), unique within the graph::

    {"type": "scheduled", "id": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Paris",
     "catch_up": false, "input": {"full": true}}
    {"type": "event", "id": "opened", "event": "issue.opened",
     "filter": {"type": "field", "path": "input.labels", "op": "contains", "value": "bug"}}
    {"type": "webhook", "id": "github", "secret_env": "GITHUB_HOOK_SECRET"}

roomkit-graph's ``{"type": "scheduled", "schedule": {"cron": ..., "timezone": ...}}`` reads
the same. An event's data is the run's input (``input.*`` in the filter).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from graph_core.conditions import Condition
from graph_core.model import Graph, Trigger
from graph_core.sources import DictSource

__all__ = [
    "FIRING_TYPES",
    "MAX_CATCH_UP",
    "SIGNATURE_HEADER",
    "SIGNATURE_WINDOW_S",
    "TriggerSpec",
    "due_ticks",
    "next_fire",
    "sign",
    "signature_id",
    "trigger_problems",
    "triggers_of",
    "verify",
]

FIRING_TYPES: Final = frozenset({"scheduled", "event", "webhook"})
MAX_CATCH_UP: Final = 1000  # missed ticks a catch-up runs at most, the newest
SIGNATURE_HEADER: Final = "X-Relaygraph-Signature"
SIGNATURE_WINDOW_S: Final = 300  # a signed webhook call is accepted this long after signing
_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger of a graph, its fields parsed."""

    id: str
    type: str
    cron: str | None = None
    timezone: str = "UTC"
    catch_up: bool = False
    input: Any = None
    event: str | None = None
    filter: Condition | None = None
    secret_env: str | None = None

    def matches(self, data: Any) -> bool:
        """An event trigger: whether ``data`` (the run's input to be) passes the filter."""
        return self.filter is None or self.filter.evaluate(DictSource(data))


def triggers_of(graph: Graph) -> list[TriggerSpec]:
    """The graph's triggers that fire (scheduled, event, webhook), in declaration order.
    One without what it fires on (a schedule without ``cron``, an event trigger without
    ``event``, a webhook without ``secret_env``: roomkit-graph's informational triggers)
    is not among them. ``ValueError`` naming the first bad one (a registered graph has
    none)."""
    specs = []
    for _, trig in _declared(graph):
        if trig.type in FIRING_TYPES:
            spec = _spec(trig)
            if _fires(spec):
                specs.append(spec)
    return specs


def _fires(spec: TriggerSpec) -> bool:
    if spec.type == "scheduled":
        return spec.cron is not None
    if spec.type == "event":
        return bool(spec.event)
    return bool(spec.secret_env)


def _declared(graph: Graph) -> list[tuple[str, Trigger]]:
    found = [("trigger", graph.trigger)] if graph.trigger.type != "manual" else []
    found += [(f"triggers[{i}]", t) for i, t in enumerate(graph.triggers)]
    return found


def _spec(trig: Trigger) -> TriggerSpec:
    raw = trig.model_dump(mode="json")
    found = raw.get("schedule")
    schedule: dict[str, Any] = found if isinstance(found, dict) else {}
    cron = raw.get("cron", schedule.get("cron"))
    tz = raw.get("timezone", schedule.get("timezone", "UTC"))
    spec = TriggerSpec(
        id=str(raw.get("id") or trig.type),
        type=trig.type,
        cron=cron if isinstance(cron, str) else None,
        timezone=tz if isinstance(tz, str) else "UTC",
        catch_up=bool(raw.get("catch_up", schedule.get("catch_up", False))),
        input=raw.get("input"),
        event=raw.get("event") if isinstance(raw.get("event"), str) else None,
        filter=Condition.from_dict(raw["filter"]) if isinstance(raw.get("filter"), dict) else None,
        secret_env=raw.get("secret_env") if isinstance(raw.get("secret_env"), str) else None,
    )
    _check(spec, raw)
    return spec


def _check(spec: TriggerSpec, raw: dict[str, Any]) -> None:
    if not _ID.match(spec.id):
        raise ValueError(f"id {spec.id!r}: use 1-64 letters, digits, '_', '-' or '.'")
    if spec.type == "scheduled":
        if spec.cron is None:
            if "cron" in raw or "cron" in (raw.get("schedule") or {}):
                raise ValueError('cron must be a string: "<minute hour day month weekday>"')
            return  # informational (roomkit-graph's): nothing fires it
        if not croniter.is_valid(spec.cron):
            raise ValueError(f"cron {spec.cron!r} is not a valid cron expression")
        _zone(spec.timezone)
        if not isinstance(raw.get("catch_up", False), bool):
            raise ValueError(f"catch_up must be true or false, got {raw.get('catch_up')!r}")
    elif spec.type == "event":
        if "event" in raw and not spec.event:
            raise ValueError(f"event must be a non-empty name, got {raw['event']!r}")
        if "filter" in raw and spec.filter is None:
            raise ValueError("filter must be a condition object")
    elif spec.type == "webhook" and "secret_env" in raw and not spec.secret_env:
        raise ValueError(
            "secret_env must name the environment variable that holds the webhook's secret "
            f"on the API's hosts, got {raw['secret_env']!r}"
        )


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r} is not a known IANA time zone") from None


def trigger_problems(graph: Graph) -> list[tuple[str, str]]:
    """(path, reason) of every bad trigger, and of ids given twice."""
    problems = []
    seen: set[str] = set()
    for path, trig in _declared(graph):
        if trig.type not in FIRING_TYPES:
            continue
        try:
            spec = _spec(trig)
        except ValueError as e:
            problems.append((path, f"{trig.type} trigger: {e}"))
            continue
        except Exception as e:  # a filter that does not parse
            problems.append((f"{path}.filter", f"{trig.type} trigger: bad filter: {e}"))
            continue
        if spec.id in seen:
            problems.append((path, f"trigger id {spec.id!r} is given twice"))
        seen.add(spec.id)
    return problems


def _moment(epoch: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC).astimezone(zone)


def next_fire(spec: TriggerSpec, after: float) -> float:
    """The first tick of a scheduled trigger strictly after ``after`` (epoch seconds)."""
    if spec.cron is None:
        raise ValueError(f"trigger {spec.id!r} has no schedule")
    it = croniter(spec.cron, _moment(after, _zone(spec.timezone)))
    return float(it.get_next(float))


def due_ticks(
    spec: TriggerSpec, last: float, now: float, slack_s: float
) -> tuple[list[float], float | None]:
    """The ticks to fire now, and the newest tick up to ``now`` (None: none since ``last``,
    the newest tick already fired). Without ``catch_up``, only a tick at most ``slack_s``
    old (the scheduler's own lateness) fires; missed ones are skipped. With it, every missed
    tick does, the newest ``MAX_CATCH_UP`` at most."""
    ticks: list[float] = []
    it = croniter(spec.cron, _moment(last, _zone(spec.timezone)))
    while True:
        tick = float(it.get_next(float))
        if tick > now:
            break
        ticks.append(tick)
        if len(ticks) > MAX_CATCH_UP:
            ticks.pop(0)
    newest = ticks[-1] if ticks else None
    if not spec.catch_up:
        ticks = [t for t in ticks if now - t <= slack_s][-1:]
    return ticks, newest


def sign(secret: str, body: bytes, at: float) -> str:
    """The signature header of a webhook call: ``t=<epoch>,v1=<hex HMAC-SHA256 of
    "<epoch>." + body>``."""
    t = str(math.floor(at))
    mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


_SIGNATURE = re.compile(r"^t=([1-9][0-9]{0,11}),v1=([0-9a-f]{64})$")


def signature_id(header: str) -> str:
    """What makes a signed call one call: its time and MAC, as the header must give them
    (``verify`` accepts nothing else), so a replay cannot pass as a new call."""
    m = _SIGNATURE.match(header.strip())
    return f"{m.group(1)}:{m.group(2)}" if m else header


def verify(secret: str, body: bytes, header: str | None, now: float) -> str | None:
    """Why a webhook call's signature is refused, or None when it is good and fresh. The
    header must be exactly ``t=<epoch seconds>,v1=<64 lowercase hex digits>``."""
    if not header:
        return f"no {SIGNATURE_HEADER} header"
    m = _SIGNATURE.match(header.strip())
    if m is None:
        return f"{SIGNATURE_HEADER} must be exactly t=<epoch seconds>,v1=<hex HMAC-SHA256>"
    t, given = m.group(1), m.group(2)
    if abs(now - int(t)) > SIGNATURE_WINDOW_S:
        return f"the signature's time is more than {SIGNATURE_WINDOW_S}s away (a replay?)"
    expected = sign(secret, body, int(t)).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        return "the signature does not match the body"
    return None
