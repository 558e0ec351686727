"""The run cache without Redis: a cached state is used only at the revision and stamp it was
written with, and a view built on it never reads records of a later revision."""

from __future__ import annotations

import pytest

from dispatcher.changes import StateWrites
from dispatcher.loaded import NeedState, RedisView
from dispatcher.prefetch import NOTHING
from dispatcher.runcache import RunCache
from graph_core.state import NodeRecord, RunRecord
from graph_core.status import NodeStatus


def _run(rev: int) -> RunRecord:
    return RunRecord(
        run_id="r", graph_id="g", graph_version=1, created_at=1.0, updated_at=1.0, rev=rev
    )


def _writes(rev: int, stamp: str, nodes: dict[str, NodeStatus]) -> StateWrites:
    run = _run(rev)
    return StateWrites(
        run=run.dump().decode(),
        record=run,
        rev=rev,
        stamp=stamp,
        nodes={n: NodeRecord(status=s).dump().decode() for n, s in nodes.items()},
        joins={},
        loops={},
        active_add={n: 1 for n in nodes},
        active_remove=[],
    )


def _created(stamp: str = "s1") -> RunCache:
    """A cache holding run ``r`` at revision 1, created by this dispatcher (complete)."""
    cache = RunCache(8)
    cache.applied("r", RedisView(None, None), _writes(1, stamp, {"a": NodeStatus.QUEUED}))
    assert "r" in cache
    return cache


def test_a_cached_view_expects_the_stamp_its_apply_wrote() -> None:
    view = _created("s1").view("r", NOTHING)
    assert view is not None and view.cached and view.rev == 1 and view.stamp == "s1"


@pytest.mark.parametrize("stamp", ["s2", None], ids=["another stamp", "no stamp"])
def test_a_load_at_the_cached_revision_with_another_stamp_drops_the_cached_state(
    stamp: str | None,
) -> None:
    cache = _created("s1")
    # Redis lost writes and the run was written again up to the same revision.
    loaded = RedisView(_run(1).dump(), 1, stamp=stamp)
    cache.loaded("r", loaded)
    assert loaded.base is None and "r" not in cache
    with pytest.raises(NeedState):
        loaded.node("a")  # read from Redis, not from the dropped state


def test_a_load_at_the_cached_revision_and_stamp_reads_the_cached_records() -> None:
    cache = _created("s1")
    loaded = RedisView(_run(1).dump(), 1, stamp="s1")
    cache.loaded("r", loaded)
    assert loaded.base is not None
    node = loaded.node("a")
    assert node is not None and node.status == NodeStatus.QUEUED


def test_a_view_stops_reading_its_base_once_the_cache_moved_it_on() -> None:
    cache = _created("s1")
    cached = cache.view("r", NOTHING)
    assert cached is not None
    # The reclaim loop loads the run while the inbox loop computes over the cache: both
    # views are built on the state of revision 1.
    loaded = RedisView(_run(1).dump(), 1, stamp="s1")
    cache.loaded("r", loaded)
    assert loaded.base is not None
    # The inbox loop's apply succeeds: the state moves on to revision 2.
    moved = _writes(2, "s2", {"a": NodeStatus.COMPLETED, "b": NodeStatus.QUEUED})
    cache.applied("r", cached, moved)
    state = cache.view("r", NOTHING)
    assert state is not None and state.rev == 2 and state.stamp == "s2"

    # The loaded view is of revision 1: none of revision 2's records may leak into it (its
    # transition would mix two states, and an ignore is returned without a revision check).
    for read in (lambda: loaded.node("a"), lambda: loaded.node("b"), loaded.active_nodes):
        with pytest.raises(NeedState):
            read()
    assert not loaded.knows_join(("b", 0))
    # Its own apply conflicts in Redis; were it taken over, it would not overwrite revision 2.
    cache.applied("r", loaded, _writes(2, "s3", {"a": NodeStatus.FAILED}))
    assert "r" not in cache
