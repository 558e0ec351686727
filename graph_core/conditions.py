"""The condition DSL: conditions are data, evaluated by interpretation (never ``eval``).

JSON forms (a superset of roomkit-graph's ``Condition.to_dict()``)::

    {"type": "field", "path": "triage.output.severity", "op": "eq", "value": "critical"}
    {"type": "all" | "any", "conditions": [...]}
    {"type": "not", "conditions": [<one condition>]}
    {"type": "otherwise"}

Rules: a missing path makes every field op false (``neq`` and ``not_in`` included); a type
mismatch (``"5" > 3``, ``contains`` on a number) is false, never an exception. Booleans are
not numbers: ``true == 1`` is false, as in JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from graph_core.errors import ConditionError, PathError
from graph_core.paths import MISSING, DataSource, parse_path, resolve

__all__ = ["OPS", "Condition", "FieldBuilder", "Op", "PathRef", "json_equal"]

Op = Literal["eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "exists"]
OPS: frozenset[str] = frozenset(get_args(Op))
ConditionType = Literal["field", "all", "any", "not", "otherwise"]


class Condition(BaseModel):
    """An edge condition. Build with ``Condition.field(path).eq(v)``, ``all_``, ``any_``..."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ConditionType
    path: str | None = None
    op: Op | None = None
    value: Any = None
    value_path: str | None = None  # compare with the value at this path instead of `value`
    conditions: tuple[Condition, ...] = ()

    @model_validator(mode="after")
    def _check_shape(self) -> Condition:
        # Errors carry a problem code and the field they are about (``at``), which graph
        # validation uses for its report; ``from_dict`` only shows the message.
        if self.type == "field":
            if self.path is None or self.op is None:
                missing = [f for f in ("path", "op") if getattr(self, f) is None]
                raise _invalid(
                    "missing_field",
                    missing[0],
                    f"a 'field' condition needs 'path' and 'op'; {_names(missing)} missing",
                )
            try:
                parse_path(self.path)
            except PathError as e:
                raise _invalid("bad_path", "path", str(e)) from e
            if self.conditions:
                raise _invalid(
                    "bad_condition",
                    "conditions",
                    f"a 'field' condition takes no 'conditions' (got {len(self.conditions)})",
                )
            if self.value_path is not None:
                try:
                    parse_path(self.value_path)
                except PathError as e:
                    raise _invalid("bad_path", "value_path", f"value_path: {e}") from e
            if (
                self.op in ("in", "not_in")
                and self.value_path is None
                and not isinstance(self.value, list | str)
            ):
                raise _invalid(
                    "bad_condition",
                    "value",
                    f"op {self.op!r} needs a list (or string) 'value', got {self.value!r}",
                )
        else:
            if self.path is not None or self.op is not None or self.value_path is not None:
                extra = [f for f in ("path", "op", "value_path") if getattr(self, f) is not None]
                raise _invalid(
                    "bad_condition",
                    extra[0],
                    f"a {self.type!r} condition takes no 'path'/'op'/'value_path' "
                    f"(found {_names(extra)}); only 'field' conditions have them",
                )
            if self.type == "not" and len(self.conditions) != 1:
                raise _invalid(
                    "bad_condition",
                    "conditions",
                    f"a 'not' condition takes exactly one condition, got {len(self.conditions)}",
                )
            if self.type == "otherwise" and self.conditions:
                raise _invalid(
                    "bad_condition",
                    "conditions",
                    f"an 'otherwise' condition takes no 'conditions' (got {len(self.conditions)})",
                )
        return self

    # --- builders -------------------------------------------------------------------

    @classmethod
    def field(cls, path: str) -> FieldBuilder:
        """Start a field condition: ``Condition.field("a.output.x").gt(3)``."""
        return FieldBuilder(path)

    @staticmethod
    def ref(path: str) -> PathRef:
        """A reference to another path's value, as a comparison's right-hand side:
        ``Condition.field("a.output.x").lt(Condition.ref("input.y"))``."""
        return PathRef(path)

    @classmethod
    def otherwise(cls) -> Condition:
        """Matches only when no other edge of the node matched."""
        return cls(type="otherwise")

    @classmethod
    def all_(cls, *conditions: Condition) -> Condition:
        return cls(type="all", conditions=tuple(conditions))

    @classmethod
    def any_(cls, *conditions: Condition) -> Condition:
        return cls(type="any", conditions=tuple(conditions))

    @classmethod
    def not_(cls, condition: Condition) -> Condition:
        return cls(type="not", conditions=(condition,))

    def __and__(self, other: Condition) -> Condition:
        return Condition.all_(self, other)

    def __or__(self, other: Condition) -> Condition:
        return Condition.any_(self, other)

    def __invert__(self) -> Condition:
        return Condition.not_(self)

    # --- serialization ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (same keys roomkit-graph writes)."""
        if self.type == "field":
            if self.value_path is not None:
                return {
                    "type": "field",
                    "path": self.path,
                    "op": self.op,
                    "value_path": self.value_path,
                }
            return {"type": "field", "path": self.path, "op": self.op, "value": self.value}
        if self.type == "otherwise":
            return {"type": "otherwise"}
        return {"type": self.type, "conditions": [c.to_dict() for c in self.conditions]}

    @classmethod
    def from_dict(cls, data: Any) -> Condition:
        """Parse the JSON form; raise ``ConditionError`` naming what is wrong."""
        from pydantic import ValidationError

        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            raise ConditionError(msg, where=f"condition.{loc}" if loc else "condition") from e

    # --- evaluation ---------------------------------------------------------------------

    @property
    def is_otherwise(self) -> bool:
        return self.type == "otherwise"

    def evaluate(self, source: DataSource) -> bool:
        """Evaluate against a run's data. ``otherwise`` evaluates true on its own."""
        if self.type == "field":
            return _eval_field(self, source)
        if self.type == "all":
            return all(c.evaluate(source) for c in self.conditions)
        if self.type == "any":
            return any(c.evaluate(source) for c in self.conditions)
        if self.type == "not":
            return not self.conditions[0].evaluate(source)
        return True  # otherwise

    def paths(self) -> Iterator[str]:
        """Every path this condition reads (used to prefetch state)."""
        if self.path is not None:
            yield self.path
        if self.value_path is not None:
            yield self.value_path
        for c in self.conditions:
            yield from c.paths()


def _invalid(code: str, at: str, message: str) -> PydanticCustomError:
    """A validation error with a problem ``code``, about the condition's field ``at``."""
    return PydanticCustomError(code, message, {"at": at})


def _names(fields: list[str]) -> str:
    return " and ".join(repr(f) for f in fields) + (" are" if len(fields) > 1 else " is")


class PathRef:
    """A reference to another path, used as the right-hand side of a comparison."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class FieldBuilder:
    """Fluent builder returned by ``Condition.field(path)``."""

    def __init__(self, path: str) -> None:
        self._path = path

    def _op(self, op: Op, value: Any = None) -> Condition:
        if isinstance(value, PathRef):
            return Condition(type="field", path=self._path, op=op, value_path=value.path)
        return Condition(type="field", path=self._path, op=op, value=value)

    def eq(self, value: Any) -> Condition:
        return self._op("eq", value)

    equals = eq

    def neq(self, value: Any) -> Condition:
        return self._op("neq", value)

    not_equals = neq

    def gt(self, value: Any) -> Condition:
        return self._op("gt", value)

    def gte(self, value: Any) -> Condition:
        return self._op("gte", value)

    def lt(self, value: Any) -> Condition:
        return self._op("lt", value)

    def lte(self, value: Any) -> Condition:
        return self._op("lte", value)

    def in_(self, values: list[Any] | PathRef) -> Condition:
        return self._op("in", values if isinstance(values, PathRef) else list(values))

    def not_in(self, values: list[Any] | PathRef) -> Condition:
        return self._op("not_in", values if isinstance(values, PathRef) else list(values))

    def contains(self, value: Any) -> Condition:
        return self._op("contains", value)

    def exists(self) -> Condition:
        return self._op("exists")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def json_equal(a: Any, b: Any) -> bool:
    """Equality with JSON's types: booleans never equal numbers, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _member(item: Any, container: Any) -> bool:
    if isinstance(container, list):
        return any(json_equal(item, x) for x in container)
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, dict):
        return isinstance(item, str) and item in container
    return False


def _ordered(a: Any, b: Any) -> bool:
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def _op_not_in(actual: Any, expected: Any) -> bool:
    if isinstance(expected, str) and not isinstance(actual, str):
        return False  # type mismatch: false, like every other op
    return isinstance(expected, list | str) and not _member(actual, expected)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "exists": lambda a, e: True,
    "eq": json_equal,
    "neq": lambda a, e: not json_equal(a, e),
    "gt": lambda a, e: _ordered(a, e) and bool(a > e),
    "gte": lambda a, e: _ordered(a, e) and bool(a >= e),
    "lt": lambda a, e: _ordered(a, e) and bool(a < e),
    "lte": lambda a, e: _ordered(a, e) and bool(a <= e),
    "in": lambda a, e: isinstance(e, list | str) and _member(a, e),
    "not_in": _op_not_in,
    "contains": lambda a, e: isinstance(a, list | str | dict) and _member(e, a),
}


def _eval_field(c: Condition, source: DataSource) -> bool:
    actual = resolve(c.path or "", source)
    if actual is MISSING:
        return False
    expected = c.value
    if c.value_path is not None:
        expected = resolve(c.value_path, source)
        if expected is MISSING:
            return False
    fn = _OPS.get(c.op or "")
    return fn is not None and fn(actual, expected)
