"""A history stream entry holds each key of the event in its own field (the stream stores
the names once per node); reading it back gives, byte for byte, the JSON that was published."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from graph_core.events import (
    HISTORY_FIELDS,
    HistoryEvent,
    history_event,
    history_json,
    history_values,
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)

EVENTS = st.builds(
    HistoryEvent,
    type=st.text(min_size=1, max_size=30),
    at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    node_id=st.none() | st.text(min_size=1, max_size=20),
    visit=st.none() | st.integers(min_value=0, max_value=10**12),
    attempt=st.none() | st.integers(min_value=0, max_value=10**12),
    data=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=5),
)


def _entry(event: HistoryEvent) -> dict[bytes, bytes]:
    """The entry as XRANGE returns it: field -> value, in the order written."""
    values = history_values(event)
    return {k.encode(): v.encode() for k, v in zip(HISTORY_FIELDS, values, strict=True)}


@given(event=EVENTS, run_id=st.text(min_size=1, max_size=40))
def test_an_entry_reads_back_as_the_published_json(event: HistoryEvent, run_id: str) -> None:
    published = orjson.dumps({"run_id": run_id, **event.model_dump(mode="json")})
    assert history_json(run_id, _entry(event)) == published
    assert history_event(run_id, _entry(event)) == orjson.loads(published)


def test_each_value_is_the_json_of_its_key() -> None:
    event = HistoryEvent(type="node.completed", at=1795449055.149, node_id="n3", visit=1, attempt=2)
    assert history_values(event) == [
        "1",
        '"node.completed"',
        "1795449055.149",
        '"n3"',
        "1",
        "2",
        "{}",
    ]
    run_event = HistoryEvent(type="run.started", at=1.5)
    assert history_values(run_event)[3:6] == ["null", "null", "null"]


def test_an_entry_of_the_earlier_layout_is_its_field_e() -> None:
    old = b'{"run_id":"r","v":1,"type":"run.started","at":1.5,"data":{}}'
    assert history_json("r", {b"e": old}) == old
    assert history_event("r", {b"e": old})["type"] == "run.started"


def test_a_key_of_a_later_version_is_kept_and_quoted() -> None:
    fields = {b"v": b"1", b"type": b'"run.started"', b'odd"key': b"[1]"}
    assert history_event("r", fields) == {
        "run_id": "r",
        "v": 1,
        "type": "run.started",
        'odd"key': [1],
    }


@pytest.mark.parametrize(
    "fields",
    [{b"e": b"[1, 2]"}, {b"e": b"not json"}, {b"type": b"unquoted"}],
    ids=["legacy-not-an-object", "legacy-garbage", "value-not-json"],
)
def test_an_entry_relaygraph_did_not_write_is_an_error(fields: dict[bytes, Any]) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        history_event("r", fields)


def test_data_orjson_cannot_write_is_stored_in_its_json_form() -> None:
    event = HistoryEvent(type="node.completed", at=1.5, data={"tags": {"a"}, "n": {1: b"x"}})
    assert history_values(event)[6] == '{"tags":["a"],"n":{"1":"x"}}'


def test_the_fields_are_the_events_keys_in_order() -> None:
    # a key added to HistoryEvent must be added to HISTORY_FIELDS, history_values and apply.lua
    assert tuple(HistoryEvent.model_fields) == HISTORY_FIELDS
