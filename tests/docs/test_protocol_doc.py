"""docs/protocol.md against the code, without a server: every field table against the
model it documents (names and defaults), every message and event the reference sections
show against the parser and the event envelope, and the key table against
``graph_core.keys``. (The walkthrough is run by test_protocol_walkthrough.py; the raw
records of real runs are checked by test_protocol_records.py.)"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from dispatcher.views import NodeView, RunView, WaitView
from graph_core.events import EVENT_VERSION, ErrorInfo, HistoryEvent
from graph_core.keys import Keys
from graph_core.messages import INBOX_FIELD, parse_approval, parse_inbox
from graph_core.state import JoinState, NodeRecord, RunRecord, WaitInfo
from tests.docs.protocol_doc import FieldRow, blocks, doc_text, field_tables, table_after

TEXT = doc_text()
TABLES = field_tables(TEXT)

# field table -> the model whose fields it lists
MODELS: dict[str, type[BaseModel]] = {
    "run record": RunRecord,
    "node record": NodeRecord,
    "error": ErrorInfo,
    "wait": WaitInfo,
    "join counters": JoinState,
    "run view": RunView,
    "node view": NodeView,
    "wait view": WaitView,
}
WITH_DEFAULTS = ("node record", "error", "wait", "join counters")  # tables with a default column
META_HASH_FIELDS = {"run", "rev", "stamp"}  # apply.lua and the client's submit script write these
IGNORED_EVENT_KEYS = {"v", "type", "run_id", "at", "data"}
SAMPLE_VARS = {"$TOKEN": "KsRCJ_FQCq1cn9IYXVhpoFk5Wz_MDrS8", "$RUN": "1795449055391-0"}


def names(rows: list[FieldRow]) -> list[str]:
    return [row.name for row in rows]


def test_every_field_table_is_checked() -> None:
    assert set(TABLES) == {*MODELS, "meta hash", "event"}


@pytest.mark.parametrize("table", sorted(MODELS))
def test_a_field_table_lists_exactly_its_models_fields(table: str) -> None:
    documented = names(TABLES[table])
    assert len(documented) == len(set(documented)), f"{table}: a field is listed twice"
    assert set(documented) == set(MODELS[table].model_fields), table


@pytest.mark.parametrize("table", WITH_DEFAULTS)
def test_documented_defaults_are_the_models(table: str) -> None:
    model = MODELS[table]
    for row in TABLES[table]:
        spec = model.model_fields[row.name]
        cell = row.cells["default"]
        if cell == "(always)":
            assert spec.is_required(), f"{table}.{row.name} has a default"
            continue
        assert not spec.is_required(), f"{table}.{row.name} is required"
        assert cell.startswith("`") and cell.endswith("`"), f"{table}.{row.name}: {cell!r}"
        default = to_jsonable_python(spec.get_default(call_default_factory=True))
        assert json.loads(cell.strip("`")) == default, f"{table}.{row.name}"


def test_internal_fields_are_marked_and_public_ones_are_not_for_records() -> None:
    # What a raw reader may rely on is exactly the fields not marked internal.
    for table in ("run record", "node record"):
        for row in TABLES[table]:
            internal = row.cells["meaning"].startswith("*internal*")
            assert internal == (row.name in INTERNAL[table]), f"{table}.{row.name}"


INTERNAL = {
    "run record": {"tokens", "live", "last_dead_end", "restarts"},
    "node record": {
        "trigger",
        "base_visits",
        "backlog",
        "lost",
        "joins",
        "children_done",
        "children_failed",
        "parent_visit",
        "done_rev",
        "comp_tries",
        "held_timer",
    },
}


def test_the_meta_hash_and_event_tables() -> None:
    assert set(names(TABLES["meta hash"])) == META_HASH_FIELDS
    assert names(TABLES["event"]) == ["run_id", *HistoryEvent.model_fields]
    v_row = next(row for row in TABLES["event"] if row.name == "v")
    assert f"`{EVENT_VERSION}`" in v_row.cells["meaning"]


def _json_values(text: str) -> list[Any]:
    """Every JSON value of a block that holds one or more of them."""
    decoder = json.JSONDecoder()
    values, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        value, i = decoder.raw_decode(text, i)
        values.append(value)
    return values


def _reference_blocks() -> list[Any]:
    """The code blocks outside the walkthrough (the walkthrough's all carry markers)."""
    return [b for b in blocks(TEXT) if b.marker is None]


def test_every_message_shown_is_accepted_by_the_parser() -> None:
    checked = 0
    for block in _reference_blocks():
        if block.lang != "json":
            continue
        for value in _json_values(block.text):
            assert isinstance(value, dict), block.text
            raw = json.dumps(value)
            if "kind" in value:
                parse_inbox(raw)
                checked += 1
            elif "decision" in value:
                parse_approval(raw)
                checked += 1
    assert checked >= 7  # submit, approval, cancel, four internal messages


def test_every_redis_cli_message_shown_is_accepted_by_the_parser() -> None:
    checked = 0
    for block in _reference_blocks():
        if block.lang != "sh":
            continue
        for line in block.text.splitlines():
            argv = shlex.split(line.split("$(", 1)[-1].rstrip(")"), comments=True)
            if len(argv) < 3 or argv[0] != "redis-cli":
                continue
            args = [_expand(a) for a in argv[1:]]
            if args[0] == "XADD" and args[1] == "relaygraph:inbox":
                assert args[2:4] == ["*", INBOX_FIELD], line
                parse_inbox(args[4])
                checked += 1
            elif args[0] == "PUBLISH" and args[1] == "relaygraph:approvals":
                parse_approval(args[2])
                checked += 1
    assert checked >= 4  # submit, publish, inbox approval, cancel


def _expand(arg: str) -> str:
    for name, value in SAMPLE_VARS.items():
        arg = arg.replace(name, value)
    return arg


def test_every_event_shown_has_the_documented_envelope() -> None:
    checked = 0
    for block in blocks(TEXT):
        if block.lang != "json":
            continue
        for value in _json_values(block.text):
            if not isinstance(value, dict) or "type" not in value or "kind" in value:
                continue
            expected = IGNORED_EVENT_KEYS if value["type"] == "event.ignored" else None
            assert set(value) == (expected or set(names(TABLES["event"]))), value
            assert value["v"] == EVENT_VERSION
            checked += 1
    assert checked >= 10


def _documented_keys() -> set[str]:
    return {row.name for row in table_after(TEXT, "keys")}


def test_the_key_table_is_what_graph_core_keys_builds() -> None:
    keys = Keys("PREFIX")
    run = keys.run("RUNID")
    built = {
        keys.inbox,
        keys.inbox_attempts,
        keys.deadletter,
        keys.approvals_channel,
        keys.approval_seen("<sha256>"),
        keys.events_channel,
        keys.timers,
        keys.leases,
        keys.layout,
        keys.graphs,
        keys.graph_latest,
        keys.runs_all,
        keys.runs_by_status("<status>"),
        keys.runs_by_graph("<graph_id>"),
        keys.idempotency("<idempotency_key>"),
        keys.workers,
        keys.triggers_last,
        keys.limits,
        keys.limits_throttled,
        keys.limit_running("<scope>"),
        keys.limit_bucket("<scope>"),
        keys.limit_held("<scope>"),
        keys.event_graphs("<event>"),
        keys.hook_seen("<sha256>"),
        keys.child_cancelled("<run_id>"),
        keys.queue("<queue>"),
        keys.queue("<queue>") + ":health-check",  # arq's, next to its queue
        keys.wake("<queue>"),
        *run.all(),
    }
    # Every key Keys has is in ``built``: a new one fails here until it is documented.
    attributes = {
        value
        for name, value in vars(keys).items()
        if isinstance(value, str) and name not in {"prefix", "inbox_group"}
    }
    assert attributes <= built
    builders = {n for n in dir(Keys) if not n.startswith("_") and callable(getattr(Keys, n))}
    assert builders == {
        "approval_seen",
        "child_cancelled",
        "event_graphs",
        "graph_field",  # a field of the graphs hash, not a key
        "hook_seen",
        "idempotency",
        "idempotency_shard",  # the shard of a submission key (sharded layout)
        "job_id",  # an arq job id (arq names its keys after it), documented with arq's keys
        "layout_problem",  # checks the layout key's value
        "limit_bucket",
        "limit_held",
        "limit_running",
        "queue",
        "run",
        "runs_by_graph",
        "runs_by_status",
        "shard",  # a shard's keys: on one server, the ones above (sharded: cluster-plan.md)
        "shard_for",
        "trigger_field",  # a field of the triggers' last-fired hash, not a key
        "wake",
    }
    documented = {k.replace("PREFIX", "<prefix>").replace("RUNID", "<run_id>") for k in built}
    assert _documented_keys() == documented
    assert f"consumer group `{keys.inbox_group}`" in TEXT
