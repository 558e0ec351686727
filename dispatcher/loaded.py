"""A run's records as loaded from Redis, which the transition function reads: ``RedisView``
(one event's reads) over an optional ``RunState`` (what the dispatcher's run cache knows of
the run, see dispatcher/runcache.py). No Redis here: the store fills views, the cache keeps
states."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dispatcher.prefetch import Prefetch
from graph_core.state import LoopRecord, NodeRecord, RunRecord

__all__ = ["NeedState", "RedisView", "RunState"]


class NeedState(Exception):
    """Raised by ``RedisView`` when the transition reads something not loaded yet."""

    def __init__(self, kind: str, key: Any) -> None:
        self.kind = kind
        self.key = key


@dataclass(eq=False)
class RunState:
    """What one dispatcher knows of a run's records at revision ``rev``, as the exact text
    Redis holds (None: no such record; a join's '': no arrivals). Outputs are not kept.
    The run cache moves a state on to the next revision in place, when an apply made over
    it succeeded; a view built on it at the older revision stops reading it then.

    ``complete``: every node, join and loop record and the live frontier are here (a run
    this dispatcher created and has written since), so a record not held does not exist.
    Otherwise a record not held is unknown and must be loaded."""

    run_raw: bytes
    rev: int
    stamp: str  # the meta hash's stamp at ``rev`` (written by this dispatcher's apply)
    run_record: RunRecord  # parsed from run_raw, for the processor's own reading
    nodes: dict[str, bytes | None] = field(default_factory=dict)
    joins: dict[tuple[str, int], str] = field(default_factory=dict)
    loops: dict[int, bytes | None] = field(default_factory=dict)
    active: dict[str, int] | None = None
    complete: bool = False

    def covers(self, prefetch: Prefetch) -> bool:
        """Whether every record ``prefetch`` names is known here. O(the prefetch)."""
        if self.complete:
            return True
        return (
            all(n in self.nodes for n in prefetch.nodes)
            and all(j in self.joins for j in prefetch.joins)
            and all(i in self.loops for i in prefetch.loops)
        )

    def size(self) -> int:
        """Records held (what the cache's bound counts)."""
        active = len(self.active) if self.active is not None else 0
        return 1 + len(self.nodes) + len(self.joins) + len(self.loops) + active


@dataclass
class RedisView:
    """A ``StateView`` over records loaded from Redis. A read of something not loaded raises
    ``NeedState``; the caller loads it and runs the (pure) transition again. Records are kept
    as the JSON Redis returned and parsed on every read, so each computation gets objects of
    its own to change (a recomputation never sees a previous attempt's edits).

    ``base``: the run cache's state of the run at this view's revision. A read looks at the
    view's own records first, then at the base's while the base is still at the view's
    revision (the cache moves a state on in place when an apply over it succeeds: a view
    loaded at the older revision meanwhile must not mix in the newer records); loads go into
    the view's own records only (the cache takes them over when an apply built on them
    succeeds, see ``RunCache``).

    ``stamp``: the meta hash's stamp read with ``rev`` (None: it had none); the apply expects
    it (see ``dispatcher.changes.new_stamp``)."""

    run_raw: bytes | None
    rev: int | None
    nodes: dict[str, bytes | None] = field(default_factory=dict)
    outputs: dict[tuple[str, int], Any] = field(default_factory=dict)
    joins: dict[tuple[str, int], str] = field(default_factory=dict)
    loops: dict[int, bytes | None] = field(default_factory=dict)
    active: dict[str, int] | None = None
    items: dict[tuple[str, int, int], list[Any]] = field(default_factory=dict)  # map results
    item_inputs: dict[tuple[str, int, int], Any] = field(default_factory=dict)  # map items
    run_record: RunRecord | None = None  # parsed once, for the caller's own reading
    stamp: str | None = None
    base: RunState | None = None
    cached: bool = False  # made from the cache alone, with no load

    def __post_init__(self) -> None:
        if self.run_raw is not None and self.run_record is None:
            self.run_record = RunRecord.model_validate_json(self.run_raw)

    def run(self) -> RunRecord | None:
        return RunRecord.model_validate_json(self.run_raw) if self.run_raw is not None else None

    def _base(self) -> RunState | None:
        """``base``, if it is still at this view's revision."""
        base = self.base
        return base if base is not None and base.rev == self.rev else None

    def node(self, node_id: str) -> NodeRecord | None:
        base = self._base()
        if node_id in self.nodes:
            raw = self.nodes[node_id]
        elif base is not None and node_id in base.nodes:
            raw = base.nodes[node_id]
        elif base is not None and base.complete:
            raw = None
        else:
            raise NeedState("node", node_id)
        return NodeRecord.model_validate_json(raw) if raw is not None else None

    def output(self, node_id: str, visit: int) -> Any:
        if (node_id, visit) not in self.outputs:
            raise NeedState("output", (node_id, visit))
        return self.outputs[(node_id, visit)]

    def arrivals(self, node_id: str, edge_index: int) -> str:
        key = (node_id, edge_index)
        if key in self.joins:
            return self.joins[key]
        base = self._base()
        if base is not None and key in base.joins:
            return base.joins[key]
        if base is not None and base.complete:
            return ""
        raise NeedState("join", key)

    def knows_join(self, key: tuple[str, int]) -> bool:
        """Whether ``arrivals`` of ``key`` can be read without a load."""
        base = self._base()
        return key in self.joins or (base is not None and (base.complete or key in base.joins))

    def loop(self, loop_id: int) -> LoopRecord | None:
        base = self._base()
        if loop_id in self.loops:
            raw = self.loops[loop_id]
        elif base is not None and loop_id in base.loops:
            raw = base.loops[loop_id]
        elif base is not None and base.complete:
            raw = None
        else:
            raise NeedState("loop", loop_id)
        return LoopRecord.model_validate_json(raw) if raw is not None else None

    def item_input(self, node_id: str, visit: int, item: int) -> Any:
        key = (node_id, visit, item)
        if key not in self.item_inputs:
            raise NeedState("item", key)
        return self.item_inputs[key]

    def item_results(self, node_id: str, visit: int, total: int) -> list[Any]:
        key = (node_id, visit, total)
        if key not in self.items:
            raise NeedState("items", key)
        return self.items[key]

    def active_nodes(self) -> dict[str, int]:
        if self.active is not None:
            return dict(self.active)
        base = self._base()
        if base is not None and base.active is not None:
            return dict(base.active)
        raise NeedState("active", None)
