"""Triggers (graph_core.triggers): declaring them, validation, when a schedule is due (time
zones, catch-up), event filters and webhook signatures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from graph_core.model import Graph
from graph_core.triggers import (
    MAX_CATCH_UP,
    due_ticks,
    next_fire,
    sign,
    triggers_of,
    verify,
)
from graph_core.validation import validate


def graph(*triggers: dict[str, Any], trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "g",
        "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "end"}],
        "edges": [{"source": "start", "target": "end"}],
        "triggers": list(triggers),
    }
    if trigger is not None:
        doc["trigger"] = trigger
    return doc


def at(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_triggers_are_read_from_both_fields_with_roomkits_schedule_shape() -> None:
    g = Graph.from_dict(
        graph(
            {"type": "event", "event": "issue.opened"},
            {"type": "webhook", "id": "gh", "secret_env": "GH_SECRET"},
            {"type": "manual"},
            trigger={"type": "scheduled", "schedule": {"cron": "0 2 * * *", "timezone": "UTC"}},
        )
    )
    specs = triggers_of(g)
    assert [(s.id, s.type) for s in specs] == [
        ("scheduled", "scheduled"),
        ("event", "event"),
        ("gh", "webhook"),
    ]
    assert specs[0].cron == "0 2 * * *" and specs[2].secret_env == "GH_SECRET"
    assert Graph.from_dict(g.to_dict()).to_dict() == g.to_dict()


@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        ({"type": "scheduled", "cron": 5}, "cron must be a string"),
        ({"type": "scheduled", "cron": "every day"}, "not a valid cron"),
        ({"type": "scheduled", "cron": "* * * * *", "timezone": "Mars/Olympus"}, "time zone"),
        ({"type": "scheduled", "cron": "* * * * *", "catch_up": "yes"}, "catch_up"),
        ({"type": "event", "event": ""}, "non-empty name"),
        ({"type": "event", "event": "x", "filter": {"type": "bogus"}}, "filter"),
        ({"type": "webhook", "secret_env": ""}, "secret_env"),
        ({"type": "event", "event": "x", "id": "no spaces"}, "id 'no spaces'"),
    ],
)
def test_bad_triggers_are_validation_problems(trigger: dict[str, Any], reason: str) -> None:
    problems = validate(graph(trigger))
    assert [p.code for p in problems] == ["bad_trigger"]
    assert reason in problems[0].message
    assert problems[0].path.startswith("triggers[0]")


def test_roomkits_informational_triggers_stay_valid_and_fire_nothing() -> None:
    for trigger in (
        {"type": "webhook", "source_type": "github"},
        {"type": "scheduled", "schedule": {"every": "day"}},
        {"type": "event", "config": {"x": 1}},
    ):
        assert validate(graph(trigger=trigger)) == []
        assert triggers_of(Graph.from_dict(graph(trigger=trigger))) == []


def test_trigger_ids_are_unique() -> None:
    problems = validate(graph({"type": "event", "event": "a"}, {"type": "event", "event": "b"}))
    assert len(problems) == 1 and "given twice" in problems[0].message


def test_a_schedule_follows_its_time_zone() -> None:
    (spec,) = triggers_of(
        Graph.from_dict(
            graph({"type": "scheduled", "cron": "0 9 * * *", "timezone": "Europe/Paris"})
        )
    )
    after = at("2026-03-28T08:00:00", "Europe/Paris")  # summer time starts on the 29th
    first = next_fire(spec, after)
    second = next_fire(spec, first)
    assert datetime.fromtimestamp(first, ZoneInfo("Europe/Paris")).hour == 9
    assert datetime.fromtimestamp(second, ZoneInfo("Europe/Paris")).hour == 9
    assert second - first == 23 * 3600  # the clocks went forward overnight


def every_minute(catch_up: bool) -> Any:
    (spec,) = triggers_of(
        Graph.from_dict(graph({"type": "scheduled", "cron": "* * * * *", "catch_up": catch_up}))
    )
    return spec


def test_due_ticks_fire_on_time_and_skip_or_catch_up_missed_ones() -> None:
    last = at("2026-12-07T10:00:00")
    on_time, newest = due_ticks(every_minute(False), last, last + 62, slack_s=10)
    assert on_time == [last + 60] and newest == last + 60
    # ten minutes down: without catch-up the missed ticks are skipped, the newest noted
    skipped, newest = due_ticks(every_minute(False), last, last + 615, slack_s=10)
    assert skipped == [] and newest == last + 600
    # ... but the newest tick, if it is only seconds late, still fires
    late, _ = due_ticks(every_minute(False), last, last + 605, slack_s=10)
    assert late == [last + 600]
    caught, newest = due_ticks(every_minute(True), last, last + 615, slack_s=10)
    assert caught == [last + 60 * i for i in range(1, 11)] and newest == last + 600
    nothing, newest = due_ticks(every_minute(True), last, last + 59, slack_s=10)
    assert nothing == [] and newest is None


def test_a_long_catch_up_runs_the_newest_ticks_only() -> None:
    last = at("2026-12-01T00:00:00")
    ticks, newest = due_ticks(every_minute(True), last, last + 3 * 86400, slack_s=10)
    assert len(ticks) == MAX_CATCH_UP and ticks[-1] == newest == last + 3 * 86400


def test_event_filters_read_the_event_data_as_input() -> None:
    (spec,) = triggers_of(
        Graph.from_dict(
            graph(
                {
                    "type": "event",
                    "event": "issue.opened",
                    "filter": {
                        "type": "field",
                        "path": "input.labels",
                        "op": "contains",
                        "value": "bug",
                    },
                }
            )
        )
    )
    assert spec.matches({"labels": ["bug", "ui"]})
    assert not spec.matches({"labels": ["docs"]})
    assert not spec.matches(None)


def test_webhook_signatures() -> None:
    now = datetime(2026, 12, 7, tzinfo=UTC).timestamp()
    body = b'{"n": 1}'
    header = sign("s3cret", body, now)
    assert verify("s3cret", body, header, now + 10) is None
    assert "does not match" in str(verify("s3cret", b'{"n": 2}', header, now))
    assert "does not match" in str(verify("other", body, header, now))
    assert "a replay" in str(verify("s3cret", body, header, now + 301))
    assert "header" in str(verify("s3cret", body, None, now))
    assert "t=<epoch" in str(verify("s3cret", body, "v1=abc", now))
    # the same signature dressed up differently is not a new call: refused outright
    for variant in (header + ",x=1", header + ",", f"t=0{header[2:]}", header.upper()):
        assert "exactly" in str(verify("s3cret", body, variant, now)), variant
