"""The shards a dispatcher is assigned in the sharded layout (docs/cluster-plan.md):
``--shards 0-7`` or ``RELAYGRAPH_SERVE_SHARDS=0-3,8,12-15``, parsed by ``parse_shard_set``
and written back compactly by ``format_shard_set`` (for logs)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from graph_core.errors import RelaygraphError

__all__ = ["ShardSetError", "format_shard_set", "parse_shard_set"]

_ITEM = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")


class ShardSetError(RelaygraphError):
    """A shard set that names no shards of this deployment, or is not written as one."""

    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(f"shard set {spec!r}: {reason}")


def parse_shard_set(spec: str, shards: int) -> frozenset[int]:
    """The shards ``spec`` names among ``shards`` (the deployment's count): comma-separated
    shards (``8``) and inclusive ranges (``0-7``), overlaps allowed. ``ShardSetError``
    names what is wrong: bad syntax, a reversed range, a shard >= ``shards``, nothing
    named, or any spec at all on one server's layout (``shards=0``)."""
    if shards <= 0:
        raise ShardSetError(
            spec,
            "this deployment uses one server's key layout (RELAYGRAPH_SHARDS=0), which has "
            "no shards to assign: leave the shard set out, or set RELAYGRAPH_SHARDS",
        )
    if not spec.strip():
        raise ShardSetError(spec, f"it names no shard; e.g. 0-{shards - 1} names them all")
    found: set[int] = set()
    for item in spec.split(","):
        text = item.strip()
        if not text:
            raise ShardSetError(spec, "an empty item (two commas in a row, or one at an end)")
        match = _ITEM.fullmatch(text)
        if match is None:
            raise ShardSetError(
                spec, f"{text!r} is neither a shard (e.g. 3) nor a range of shards (e.g. 0-7)"
            )
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if high < low:
            raise ShardSetError(spec, f"{text!r} is a reversed range: write {high}-{low}")
        if high >= shards:
            raise ShardSetError(
                spec, f"there is no shard {high}: this deployment has {shards} (0-{shards - 1})"
            )
        found.update(range(low, high + 1))
    return frozenset(found)


def format_shard_set(shards: Iterable[int]) -> str:
    """``shards`` as ``parse_shard_set`` reads them, ranges joined: ``0-3,8,12-15``
    (``-`` for none)."""
    items: list[str] = []
    run: list[int] = []
    for k in sorted(set(shards)):
        if run and k == run[-1] + 1:
            run.append(k)
            continue
        if run:
            items.append(_item(run))
        run = [k]
    if run:
        items.append(_item(run))
    return ",".join(items) or "-"


def _item(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"
