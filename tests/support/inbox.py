"""Driving a dispatcher by hand: write inbox messages, read them back as its consumer, and
compare the states it leaves."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from graph_core.events import NodeReported
from graph_core.messages import encode_inbox

Entry = tuple[bytes, dict[bytes, bytes]]


def completed_report(run_id: str, node_id: str, visit: int = 1, attempt: int = 1) -> bytes:
    """The inbox message of a worker reporting ``node_id`` completed, its output naming it."""
    return encode_inbox(
        NodeReported(
            run_id=run_id,
            node_id=node_id,
            visit=visit,
            attempt=attempt,
            status="completed",
            output={"node": node_id, "visit": visit},
        )
    )


async def push(redis: Any, dispatcher: Any, messages: Iterable[bytes]) -> None:
    """XADD each message to the dispatcher's inbox, in order."""
    for m in messages:
        await redis.xadd(dispatcher.keys.inbox, {"m": m})


async def read(redis: Any, dispatcher: Any) -> list[Entry]:
    """Every new inbox entry, read as ``dispatcher``'s consumer (so it holds them pending)."""
    keys = dispatcher.keys
    reply = await redis.xreadgroup(
        keys.inbox_group, dispatcher.consumer, {keys.inbox: ">"}, count=10_000
    )
    return [(eid, fields) for _, entries in reply or [] for eid, fields in entries]


def drop_stamp(meta: dict[bytes, bytes]) -> None:
    """Take out a run's meta stamp (checking its form): random per write, so it differs
    between two ways of reaching the same state. Every applied run has one."""
    if meta:
        stamp = meta.pop(b"stamp")
        assert len(stamp) == 16 and int(stamp, 16) >= 0, stamp
