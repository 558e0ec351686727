"""A dispatcher's assigned shards (``--shards``, ``RELAYGRAPH_SERVE_SHARDS``): the parser in
graph_core/shardset.py, the settings that use it, the CLI flag, and the lease key."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.settings import DispatcherSettings
from graph_core.errors import RelaygraphError
from graph_core.keys import MAX_SHARDS, Keys, key_slot
from graph_core.settings import SettingsError, load_settings
from graph_core.shardset import ShardSetError, format_shard_set, parse_shard_set
from relaygraph.cli import main


@pytest.mark.parametrize(
    ("spec", "shards", "expected"),
    [
        ("0-7", 16, set(range(8))),
        ("0-3,8,12-15", 16, {0, 1, 2, 3, 8, 12, 13, 14, 15}),
        ("5", 8, {5}),
        (" 1 - 2 , 2-3 ", 4, {1, 2, 3}),  # spaces, overlaps
        ("3-3", 4, {3}),
        ("0-255", MAX_SHARDS, set(range(256))),
    ],
)
def test_a_shard_set_names_its_shards(spec: str, shards: int, expected: set[int]) -> None:
    assert parse_shard_set(spec, shards) == expected


@pytest.mark.parametrize(
    ("spec", "shards", "reason"),
    [
        ("", 16, "names no shard; e.g. 0-15 names them all"),
        ("  ", 4, "names no shard"),
        ("0-3,", 16, "an empty item"),
        ("0,,1", 16, "an empty item"),
        ("a-b", 16, "'a-b' is neither a shard (e.g. 3) nor a range"),
        ("-3", 16, "'-3' is neither"),
        ("1-2-3", 16, "'1-2-3' is neither"),
        ("0..7", 16, "'0..7' is neither"),
        ("7-0", 16, "'7-0' is a reversed range: write 0-7"),
        ("0-16", 16, "there is no shard 16: this deployment has 16 (0-15)"),
        ("4", 4, "there is no shard 4"),
        ("0-3", 0, "one server's key layout (RELAYGRAPH_SHARDS=0)"),
    ],
)
def test_a_bad_shard_set_is_refused_naming_what_is_wrong(
    spec: str, shards: int, reason: str
) -> None:
    with pytest.raises(ShardSetError) as e:
        parse_shard_set(spec, shards)
    assert reason in e.value.reason
    assert e.value.spec == spec
    assert repr(spec) in str(e.value)


@given(
    shards=st.integers(min_value=1, max_value=MAX_SHARDS),
    data=st.data(),
)
def test_a_formatted_set_parses_back_to_itself(shards: int, data: st.DataObject) -> None:
    chosen = data.draw(st.frozensets(st.integers(0, shards - 1), min_size=1))
    text = format_shard_set(chosen)
    assert parse_shard_set(text, shards) == chosen
    # ranges are joined: no two items are adjacent
    items = text.split(",")
    assert len(items) == len({(int(i.split("-")[0]), int(i.split("-")[-1])) for i in items})
    bounds = [(int(i.split("-")[0]), int(i.split("-")[-1])) for i in items]
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(bounds))


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=6))
def test_ranges_name_their_inclusive_span_or_are_refused(pairs: list[tuple[int, int]]) -> None:
    spec = ",".join(f"{a}-{b}" for a, b in pairs)
    shards = 32
    if any(b < a for a, b in pairs) or any(max(a, b) >= shards for a, b in pairs):
        with pytest.raises(ShardSetError):
            parse_shard_set(spec, shards)
    else:
        expected = {k for a, b in pairs for k in range(a, b + 1)}
        assert parse_shard_set(spec, shards) == expected


def test_format_of_nothing_and_of_singles() -> None:
    assert format_shard_set([]) == "-"
    assert format_shard_set([3, 1, 2, 7, 9, 10]) == "1-3,7,9-10"


# --- settings -----------------------------------------------------------------------------


def test_settings_default_to_every_shard() -> None:
    assert DispatcherSettings(shards=4).assigned_shards == {0, 1, 2, 3}
    assert DispatcherSettings().assigned_shards == {0}  # one server: its only shard
    assert DispatcherSettings().shard_lease_s == 5.0


def test_settings_from_the_environment_with_commas() -> None:
    env = {"RELAYGRAPH_SHARDS": "16", "RELAYGRAPH_SERVE_SHARDS": "0-3,8,12-15"}
    settings = load_settings(DispatcherSettings, env=env)
    assert settings.assigned_shards == {0, 1, 2, 3, 8, 12, 13, 14, 15}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAYGRAPH_SHARDS": "4", "RELAYGRAPH_SERVE_SHARDS": "2-9"}, "there is no shard 9"),
        ({"RELAYGRAPH_SERVE_SHARDS": "0-1"}, "one server's key layout"),
        ({"RELAYGRAPH_SHARDS": "4", "RELAYGRAPH_SHARD_LEASE_S": "0"}, "shard_lease_s"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(DispatcherSettings, env=env)
    assert message in str(e.value)
    if "SERVE" in "".join(env):
        assert "serve_shards" in str(e.value) and "--shards" in str(e.value)


def test_other_processes_accept_the_dispatchers_shard_settings() -> None:
    from worker.settings import WorkerSettings

    env = {"RELAYGRAPH_SERVE_SHARDS": "0-1", "RELAYGRAPH_SHARD_LEASE_S": "2"}
    load_settings(WorkerSettings, env=env)  # one shared environment works for every process


def test_the_dispatcher_command_refuses_a_bad_shard_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYGRAPH_SHARDS", "4")
    code = main(["dispatcher", "--shards", "3-1", "--redis", "redis://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'3-1' is a reversed range: write 1-3" in err


# --- the lease key ------------------------------------------------------------------------


def test_each_shard_has_a_lease_key_in_its_own_slot() -> None:
    keys = Keys("rg", shards=16)
    for k in range(16):
        shard = keys.shard(k)
        assert shard.dispatcher == f"{shard.base}:dispatcher"
        assert key_slot(shard.dispatcher) == key_slot(shard.inbox)
    with pytest.raises(RelaygraphError, match="sharded layout only"):
        _ = Keys("rg").shard(0).dispatcher
