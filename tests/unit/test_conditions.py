"""The condition DSL: every op, missing paths, type mismatches, builders, JSON, properties."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_core.conditions import OPS, Condition, json_equal
from graph_core.errors import ConditionError, RelaygraphError
from graph_core.sources import DictSource

SRC = DictSource(
    {
        "title": "Checkout returns 500",
        "count": 5,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "tags": ["bug", "prod", 3],
        "labels": {"p0": True, "area": "payments"},
    },
    {"triage": [{"severity": "low"}, {"severity": "critical", "score": 9}]},
)


def check(path: str, op: str, value: Any = None, source: DictSource = SRC) -> bool:
    """Build the condition from its JSON form (as a stored graph would) and evaluate it."""
    return Condition.from_dict({"type": "field", "path": path, "op": op, "value": value}).evaluate(
        source
    )


# --- every op -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "op", "value", "expected"),
    [
        ("input.title", "eq", "Checkout returns 500", True),
        ("input.title", "eq", "other", False),
        ("input.count", "eq", 5.0, True),  # 5 == 5.0 in JSON
        ("input.nothing", "eq", None, True),
        ("input.tags", "eq", ["bug", "prod", 3], True),
        ("input.labels", "eq", {"area": "payments", "p0": True}, True),
        ("input.title", "neq", "other", True),
        ("input.title", "neq", "Checkout returns 500", False),
        ("input.count", "gt", 4, True),
        ("input.count", "gt", 5, False),
        ("input.count", "gte", 5, True),
        ("input.count", "gte", 6, False),
        ("input.count", "lt", 5.5, True),
        ("input.count", "lt", 5, False),
        ("input.count", "lte", 5, True),
        ("input.count", "lte", 4.9, False),
        ("input.ratio", "gt", 0.25, True),
        ("input.title", "gt", "A", True),  # strings compare with strings
        ("input.title", "lt", "A", False),
        ("input.count", "in", [1, 5, 9], True),
        ("input.count", "in", [1, 9], False),
        ("input.title", "in", ["Checkout returns 500", "x"], True),
        ("input.title", "in", "prefix Checkout returns 500 suffix", True),  # substring
        ("input.count", "not_in", [1, 9], True),
        ("input.count", "not_in", [5], False),
        ("input.title", "not_in", "xyz", True),
        ("input.tags", "contains", "prod", True),  # list membership
        ("input.tags", "contains", 3, True),
        ("input.tags", "contains", "pro", False),  # membership, not substring
        ("input.title", "contains", "500", True),  # substring
        ("input.title", "contains", "404", False),
        ("input.labels", "contains", "area", True),  # dict key
        ("input.labels", "contains", "payments", False),  # values are not keys
        ("input.title", "exists", None, True),
        ("input.nothing", "exists", None, True),  # null is present
        ("triage.output.severity", "eq", "critical", True),  # latest visit
        ("triage.outputs.1.severity", "eq", "low", True),
        ("triage.visits", "gte", 2, True),
    ],
)
def test_ops(path: str, op: str, value: Any, expected: bool) -> None:
    assert check(path, op, value) is expected


MISSING_CASES: dict[str, Any] = {
    "eq": None,
    "neq": "anything",
    "gt": 0,
    "gte": 0,
    "lt": 0,
    "lte": 0,
    "in": [None, "x"],
    "not_in": ["x"],
    "contains": "x",
    "exists": None,
}


def test_missing_cases_cover_every_op() -> None:
    assert set(MISSING_CASES) == OPS


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize(
    "path",
    ["input.absent", "input.title.deeper", "input.tags.7", "never.output.x", "triage.outputs.5"],
)
def test_missing_path_is_false_for_every_op(op: str, path: str) -> None:
    assert check(path, op, MISSING_CASES[op]) is False


def test_missing_run_input_is_false() -> None:
    empty = DictSource()
    assert check("input.x", "neq", 1, empty) is False
    assert check("input.x", "not_in", [1], empty) is False


@pytest.mark.parametrize(
    ("path", "op", "value"),
    [
        ("input.title", "gt", 3),  # str vs number
        ("input.count", "gt", "3"),  # "5" > 3 the other way round
        ("input.count", "lt", "9"),
        ("input.count", "gte", None),
        ("input.nothing", "lte", 1),
        ("input.tags", "gt", ["a"]),  # lists are not ordered
        ("input.labels", "lt", {}),
        ("input.flag", "gt", 0),  # booleans are not numbers
        ("input.count", "gt", False),
        ("input.flag", "eq", 1),  # true == 1 is false
        ("input.count", "eq", True),
        ("input.count", "eq", "5"),
        ("input.nothing", "eq", 0),
        ("input.count", "contains", 5),  # contains on a number
        ("input.flag", "contains", "t"),
        ("input.nothing", "contains", "n"),
        ("input.title", "contains", 500),  # number in a string
        ("input.labels", "contains", 1),  # non-string dict key
        ("input.tags", "contains", True),  # True is not 3 nor any element
        ("input.count", "in", "12345"),  # number in a string
        ("input.flag", "in", [1]),
        ("input.count", "not_in", "12345"),  # mismatch: false, like every other op
    ],
)
def test_type_mismatch_is_false(path: str, op: str, value: Any) -> None:
    assert check(path, op, value) is False


def test_mismatched_neq_and_not_in_are_true_where_the_values_simply_differ() -> None:
    # true != 1 in JSON, and 1 is not an element of ["1"]: these are real answers.
    assert check("input.flag", "neq", 1) is True
    assert check("input.count", "not_in", ["5"]) is True


def test_json_equal() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal(0, False)
    assert json_equal([1, {"a": True}], [1.0, {"a": True}])
    assert not json_equal([1, {"a": True}], [1, {"a": 1}])
    assert not json_equal([1], [1, 2])
    assert not json_equal({"a": 1}, {"b": 1})
    assert not json_equal("1", 1)
    assert json_equal(None, None)


# --- combinators ----------------------------------------------------------------------------

T = Condition.field("input.count").eq(5)
F = Condition.field("input.count").eq(6)
ABSENT = Condition.field("input.absent").eq(1)


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (Condition.all_(T, T), True),
        (Condition.all_(T, F), False),
        (Condition.all_(), True),
        (Condition.any_(F, T), True),
        (Condition.any_(F, F), False),
        (Condition.any_(), False),
        (Condition.not_(F), True),
        (Condition.not_(T), False),
        (Condition.not_(ABSENT), True),  # not of a false (missing) field is true
        (Condition.all_(T, Condition.any_(F, Condition.not_(F))), True),
        (T & F, False),
        (T | F, True),
        (~T, False),
        (Condition.otherwise(), True),
    ],
)
def test_combinators(cond: Condition, expected: bool) -> None:
    assert cond.evaluate(SRC) is expected


def test_operators_build_the_same_trees_as_the_builders() -> None:
    assert Condition.all_(T, F) == (T & F)
    assert Condition.any_(T, F) == (T | F)
    assert Condition.not_(T) == ~T


# --- builder API ----------------------------------------------------------------------------


def test_builder_ops() -> None:
    f = Condition.field("a.output.x")
    built = {
        "eq": f.eq(1),
        "neq": f.neq(1),
        "gt": f.gt(1),
        "gte": f.gte(1),
        "lt": f.lt(1),
        "lte": f.lte(1),
        "in": f.in_([1]),
        "not_in": f.not_in([1]),
        "contains": f.contains(1),
        "exists": f.exists(),
    }
    assert set(built) == OPS
    for op, cond in built.items():
        assert cond.type == "field"
        assert cond.path == "a.output.x"
        assert cond.op == op


def test_builder_to_dict() -> None:
    assert Condition.field("a.output.x").gt(3).to_dict() == {
        "type": "field",
        "path": "a.output.x",
        "op": "gt",
        "value": 3,
    }
    assert Condition.field("a.output.x").exists().to_dict()["value"] is None
    assert Condition.otherwise().to_dict() == {"type": "otherwise"}
    assert Condition.not_(T).to_dict() == {"type": "not", "conditions": [T.to_dict()]}


def test_roomkit_style_aliases() -> None:
    f = Condition.field("a.output.x")
    assert f.equals("y") == f.eq("y")
    assert f.not_equals("y") == f.neq("y")


def test_in_copies_the_list() -> None:
    values = [1, 2]
    cond = Condition.field("a.output.x").in_(values)
    values.append(3)
    assert cond.value == [1, 2]


def test_builder_rejects_bad_path() -> None:
    with pytest.raises(ValueError, match="empty segment"):
        Condition.field("a..x").eq(1)


def test_conditions_are_immutable() -> None:
    with pytest.raises(ValueError, match="frozen"):
        T.op = "neq"  # type: ignore[misc]


def test_paths_lists_every_path() -> None:
    cond = Condition.all_(
        Condition.field("a.output.x").eq(1),
        Condition.not_(Condition.any_(Condition.field("input.y").exists(), Condition.otherwise())),
    )
    assert list(cond.paths()) == ["a.output.x", "input.y"]


# --- from_dict ------------------------------------------------------------------------------


def test_from_dict_reads_roomkit_forms() -> None:
    data = {
        "type": "any",
        "conditions": [
            {"type": "field", "path": "triage.output.severity", "op": "eq", "value": "critical"},
            {"type": "not", "conditions": [{"type": "field", "path": "input.x", "op": "exists"}]},
            {"type": "all", "conditions": []},
        ],
    }
    cond = Condition.from_dict(data)
    assert cond.type == "any"
    assert cond.conditions[1].conditions[0].value is None
    assert cond.evaluate(SRC) is True
    assert Condition.from_dict(cond.to_dict()) == cond


@pytest.mark.parametrize(
    ("data", "where", "message_part"),
    [
        (42, "condition", "valid dictionary"),
        ({}, "condition.type", "Field required"),
        ({"type": "maybe"}, "condition.type", "'field'"),
        ({"type": "field", "op": "eq"}, "condition", "needs 'path' and 'op'"),
        ({"type": "field", "path": "a.output.x"}, "condition", "needs 'path' and 'op'"),
        ({"type": "field", "path": "a.output.x", "op": "like"}, "condition.op", "'eq'"),
        ({"type": "field", "path": "a..x", "op": "eq"}, "condition", "empty segment"),
        ({"type": "field", "path": "a.output.x", "op": "in", "value": 3}, "condition", "list"),
        ({"type": "field", "path": "a.output.x", "op": "eq", "colour": 1}, "condition.colour", ""),
        ({"type": "not", "conditions": []}, "condition", "exactly one"),
        ({"type": "otherwise", "conditions": [{"type": "otherwise"}]}, "condition", "no 'cond"),
        ({"type": "all", "path": "a.output.x"}, "condition", "no 'path'"),
        (
            {"type": "all", "conditions": [{"type": "field", "path": "a.output.x", "op": "bad"}]},
            "condition.conditions.0.op",
            "'eq'",
        ),
        (
            {"type": "any", "conditions": [{"type": "otherwise"}, {"type": "not"}]},
            "condition.conditions.1",
            "exactly one",
        ),
    ],
)
def test_from_dict_errors_name_the_location(data: Any, where: str, message_part: str) -> None:
    with pytest.raises(ConditionError) as info:
        Condition.from_dict(data)
    err = info.value
    assert isinstance(err, RelaygraphError)
    assert err.where == where
    assert message_part in str(err)
    assert str(err).startswith(f"{where}: ")
    assert "Value error" not in str(err)


# --- properties -----------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
PATHS = ["input.a", "input.b", "n.output.x", "n.output.y", "n.visits", "n.outputs.1.x"]


@st.composite
def field_conditions(draw: st.DrawFn, paths: list[str] = PATHS) -> Condition:
    op = draw(st.sampled_from(sorted(OPS)))
    value: Any
    if op in ("in", "not_in"):
        value = draw(st.lists(JSON_VALUES, max_size=4) | st.text(max_size=5))
    elif op == "exists":
        value = None
    else:
        value = draw(JSON_VALUES)
    return Condition(type="field", path=draw(st.sampled_from(paths)), op=op, value=value)


def conditions(paths: list[str] = PATHS, otherwise: bool = True) -> st.SearchStrategy[Condition]:
    leaves = field_conditions(paths)
    if otherwise:
        leaves = leaves | st.just(Condition.otherwise())
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3).map(lambda cs: Condition.all_(*cs))
            | st.lists(inner, max_size=3).map(lambda cs: Condition.any_(*cs))
            | inner.map(Condition.not_)
        ),
        max_leaves=8,
    )


@st.composite
def full_sources(draw: st.DrawFn) -> DictSource:
    """A source in which every path of ``PATHS`` is present."""
    first = {"x": draw(JSON_VALUES), "y": draw(JSON_VALUES)}
    later = [
        {"x": draw(JSON_VALUES), "y": draw(JSON_VALUES)} for _ in range(draw(st.integers(0, 2)))
    ]
    return DictSource({"a": draw(JSON_VALUES), "b": draw(JSON_VALUES)}, {"n": [first, *later]})


@given(conditions())
def test_round_trip_through_dict(cond: Condition) -> None:
    assert Condition.from_dict(cond.to_dict()) == cond


@given(conditions())
def test_round_trip_through_json_bytes(cond: Condition) -> None:
    raw = orjson.dumps(cond.to_dict())
    again = Condition.from_dict(orjson.loads(raw))
    assert again == cond
    assert orjson.dumps(again.to_dict()) == raw


@given(conditions(), full_sources())
def test_not_negates_when_every_path_is_present(cond: Condition, src: DictSource) -> None:
    assert Condition.not_(cond).evaluate(src) is (not cond.evaluate(src))


@given(field_conditions(), full_sources())
def test_negated_ops_complement_their_op_when_the_path_is_present(
    cond: Condition, src: DictSource
) -> None:
    path, value = cond.path or "", cond.value
    field = Condition.field(path)
    assert field.neq(value).evaluate(src) is (not field.eq(value).evaluate(src))
    assert field.exists().evaluate(src) is True
    if isinstance(value, list):
        assert field.not_in(value).evaluate(src) is (not field.in_(value).evaluate(src))


@given(
    st.sampled_from(["input.a", "n.output.x"]),
    st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
)
def test_orderings_agree(path: str, actual: Any, bound: Any) -> None:
    src = DictSource({"a": actual}, {"n": [{"x": actual}]})
    f = Condition.field(path)
    gt, gte, lt, lte, eq = (
        f.gt(bound).evaluate(src),
        f.gte(bound).evaluate(src),
        f.lt(bound).evaluate(src),
        f.lte(bound).evaluate(src),
        f.eq(bound).evaluate(src),
    )
    comparable = isinstance(actual, str) == isinstance(bound, str)
    if not comparable:
        assert not (gt or gte or lt or lte or eq)
    else:
        assert gte is (gt or eq)
        assert lte is (lt or eq)
        assert gt is (not lte)


@settings(max_examples=60)
@given(conditions(), conditions(), full_sources())
def test_all_any_identities(a: Condition, b: Condition, src: DictSource) -> None:
    va, vb = a.evaluate(src), b.evaluate(src)
    assert Condition.all_().evaluate(src) is True
    assert Condition.any_().evaluate(src) is False
    assert Condition.all_(a).evaluate(src) is va
    assert Condition.any_(a).evaluate(src) is va
    assert Condition.all_(a, b).evaluate(src) is (va and vb)
    assert Condition.any_(a, b).evaluate(src) is (va or vb)
    # De Morgan
    assert (~(a & b)).evaluate(src) is ((~a) | (~b)).evaluate(src)
    assert (~(a | b)).evaluate(src) is ((~a) & (~b)).evaluate(src)
