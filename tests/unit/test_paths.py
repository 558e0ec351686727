"""Paths: parsing every form, resolving against a DictSource, MISSING versus null."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graph_core.errors import PathError, RelaygraphError
from graph_core.paths import MISSING, Missing, ParsedPath, parse_path, resolve, walk
from graph_core.sources import DictSource


@pytest.fixture
def source() -> DictSource:
    return DictSource(
        {"title": "Checkout 500", "tags": ["bug", "prod"], "meta": {"n": None}},
        {
            "triage": [
                {"severity": "low", "score": 1},
                {"severity": "critical", "score": 9, "labels": ["p0"]},
            ],
            "empty": [],
        },
    )


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "root", "kind", "visit", "rest"),
    [
        ("input", "input", "input", None, ()),
        ("input.title", "input", "input", None, ("title",)),
        ("input.a.b.0", "input", "input", None, ("a", "b", "0")),
        ("triage.output", "triage", "output", None, ()),
        ("triage.output.severity", "triage", "output", None, ("severity",)),
        ("triage.outputs.2", "triage", "outputs", 2, ()),
        ("triage.outputs.2.labels.0", "triage", "outputs", 2, ("labels", "0")),
        ("triage.visits", "triage", "visits", None, ()),
        ("my-node_1.output.x", "my-node_1", "output", None, ("x",)),
    ],
)
def test_parse_forms(
    raw: str, root: str, kind: str, visit: int | None, rest: tuple[str, ...]
) -> None:
    p = parse_path(raw)
    assert (p.raw, p.root, p.kind, p.visit, p.rest) == (raw, root, kind, visit, rest)


def test_node_id_property() -> None:
    assert parse_path("input.x").node_id is None
    assert parse_path("a.output.x").node_id == "a"
    assert parse_path("a.visits").node_id == "a"


def test_parse_is_cached() -> None:
    assert parse_path("a.output.cached") is parse_path("a.output.cached")


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("a..b", "empty segment"),
        (".a.output", "empty segment"),
        ("a.output.", "empty segment"),
        ("triage", "second segment"),
        ("triage.result", "unknown segment 'result'"),
        ("triage.visits.x", "no fields"),
        ("triage.outputs", "visit number"),
        ("triage.outputs.x", "visit number"),
        ("triage.outputs.0", "visit number"),
        ("triage.outputs.-1", "visit number"),
    ],
)
def test_parse_errors_name_the_path(raw: str, reason_part: str) -> None:
    with pytest.raises(PathError) as info:
        parse_path(raw)
    assert reason_part in info.value.reason
    assert info.value.path == raw
    assert isinstance(info.value, RelaygraphError)
    assert repr(raw) in str(info.value)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(PathError):
        parse_path(42)


# --- resolving ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("input.title", "Checkout 500"),
        ("input.tags.1", "prod"),
        ("input.tags.-1", "prod"),
        ("input.meta.n", None),
        ("triage.output.severity", "critical"),
        ("triage.output.labels.0", "p0"),
        ("triage.outputs.1.severity", "low"),
        ("triage.outputs.2.score", 9),
        ("triage.visits", 2),
        ("empty.visits", 0),
        ("never.visits", 0),
    ],
)
def test_resolve(source: DictSource, path: str, expected: Any) -> None:
    assert resolve(path, source) == expected


def test_resolve_whole_values(source: DictSource) -> None:
    assert resolve("input", source) == source.run_input()
    assert resolve("triage.output", source) == {
        "severity": "critical",
        "score": 9,
        "labels": ["p0"],
    }


@pytest.mark.parametrize(
    "path",
    [
        "input.nope",
        "input.title.deeper",
        "input.tags.2",
        "input.tags.-3",
        "input.tags.x",
        "input.meta.n.deeper",
        "triage.output.nope",
        "triage.outputs.1.labels",
        "triage.outputs.3",
        "triage.outputs.3.severity",
        "empty.output",
        "never.output.x",
    ],
)
def test_resolve_missing(source: DictSource, path: str) -> None:
    assert resolve(path, source) is MISSING


def test_resolve_accepts_parsed_path(source: DictSource) -> None:
    parsed: ParsedPath = parse_path("triage.output.score")
    assert resolve(parsed, source) == 9


def test_null_is_not_missing(source: DictSource) -> None:
    value = resolve("input.meta.n", source)
    assert value is None
    assert value is not MISSING


def test_missing_sentinel() -> None:
    assert Missing() is MISSING
    assert not MISSING
    assert repr(MISSING) == "MISSING"


def test_walk_into_scalars_is_missing() -> None:
    assert walk(3, ("a",)) is MISSING
    assert walk("abc", ("0",)) is MISSING
    assert walk({"a": [1, {"b": 2}]}, ("a", "1", "b")) == 2
    assert walk([1], ()) == [1]


# --- DictSource -----------------------------------------------------------------------------


def test_dict_source_visits() -> None:
    src = DictSource()
    assert src.run_input() is None
    assert src.visit_count("a") == 0
    assert src.latest_output("a") is MISSING
    src.add_output("a", {"v": 1})
    src.add_output("a", {"v": 2})
    assert src.visit_count("a") == 2
    assert src.latest_output("a") == {"v": 2}
    assert src.output_at("a", 1) == {"v": 1}
    assert src.output_at("a", 0) is MISSING
    assert src.output_at("a", 3) is MISSING
    assert "DictSource" in repr(src)


def test_dict_source_copies_visit_lists() -> None:
    visits: list[Any] = [1]
    src = DictSource(None, {"a": visits})
    visits.append(2)
    assert src.visit_count("a") == 1


@given(st.lists(st.integers(), max_size=5), st.integers(min_value=1, max_value=7))
def test_outputs_n_matches_list_position(outputs: list[int], visit: int) -> None:
    src = DictSource(None, {"n": outputs})
    got = resolve(f"n.outputs.{visit}", src)
    if visit <= len(outputs):
        assert got == outputs[visit - 1]
    else:
        assert got is MISSING
    assert resolve("n.visits", src) == len(outputs)
