"""Driving a dispatcher by hand: write inbox messages, read them back as its consumer, and
compare the states it leaves."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from graph_core.errors import RelaygraphError
from graph_core.events import NodeReported
from graph_core.messages import encode_inbox, parse_inbox

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
    """XADD each message to the inbox of its run's shard (one server: the inbox; a message
    that names no run, or is not one, to the first shard's), in order."""
    for m in messages:
        try:
            run_id = getattr(parse_inbox(m), "run_id", None) or ""
        except RelaygraphError:
            run_id = ""
        keys = dispatcher.keys
        inbox = (keys.shard_for(run_id) if run_id else keys.shard(0)).inbox
        await redis.xadd(inbox, {"m": m})


async def read(redis: Any, dispatcher: Any) -> list[Entry]:
    """Every new inbox entry of every shard, read as ``dispatcher``'s consumer (so it holds
    them pending), shard by shard."""
    keys = dispatcher.keys
    found: list[Entry] = []
    for k in range(max(1, keys.shards)):
        reply = await redis.xreadgroup(
            keys.inbox_group, dispatcher.consumer, {keys.shard(k).inbox: ">"}, count=10_000
        )
        found += [(eid, fields) for _, entries in reply or [] for eid, fields in entries]
    return found


def drop_stamp(meta: dict[bytes, bytes]) -> None:
    """Take out a run's meta stamp (checking its form): random per write, so it differs
    between two ways of reaching the same state. Every applied run has one."""
    if meta:
        stamp = meta.pop(b"stamp")
        assert len(stamp) == 16 and int(stamp, 16) >= 0, stamp
