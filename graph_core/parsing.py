"""Loading a graph item by item: every parse problem, in plain words.

``Graph.from_dict``'s slow path, taken only when the whole-model pydantic pass fails. Each
top-level field, node and edge is parsed on its own, so one bad item hides nothing else;
pydantic's wording ("Input should be", "Field required") is rewritten to say where, what was
found and what is allowed; and what could be read is kept for the semantic checks
(``graph_core.validation.validate_report``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import orjson
from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from graph_core.conditions import Condition
from graph_core.errors import PathError, Problem
from graph_core.model import (
    JOIN_RULE,
    Compensation,
    Edge,
    Graph,
    Node,
    RetryPolicy,
    Trigger,
    WaitPolicy,
)
from graph_core.paths import parse_path

__all__ = ["ParseReport", "parse_graph", "translate_errors"]


@dataclass(frozen=True, slots=True)
class ParseReport:
    """What parsing a graph dict field by field and item by item found.

    ``graph`` holds every node and edge whose ids (ends) could be read, the fields that failed
    replaced by defaults and a broken condition by what could be read of it, or is ``None``
    when ``nodes`` or ``edges`` is not a list. It exists to be validated, never run. The other
    fields say what was lost, so that validation does not report problems that only follow
    from a parse problem (an edge "dangling" to a node whose ``retry`` was malformed).
    """

    problems: list[Problem]
    graph: Graph | None = None
    node_pos: tuple[int, ...] = ()  # graph.nodes[k] is data["nodes"][node_pos[k]]
    edge_pos: tuple[int, ...] = ()  # graph.edges[k] is data["edges"][edge_pos[k]]
    broken: Mapping[str, frozenset[str]] = dataclass_field(default_factory=dict)  # id -> fields
    lost_types: frozenset[str] = frozenset()  # types of dropped or untyped nodes; "*": unknown
    lost_nodes: int = 0  # nodes dropped because their id could not be read
    lost_edges: tuple[tuple[str | None, str | None], ...] = ()  # readable ends of dropped edges


def parse_graph(data: Mapping[str, Any]) -> ParseReport:
    """Parse a graph dict piece by piece; see ``ParseReport``."""
    raw_nodes, raw_edges = data.get("nodes", []), data.get("edges", [])
    top = {k: v for k, v in data.items() if k not in ("nodes", "edges") or not isinstance(v, list)}
    problems: list[Problem] = []
    try:
        graph = Graph.model_validate(top)
    except ValidationError as e:
        problems += translate_errors(e.errors(), Graph, "", "")
        bad = _bad_fields(e.errors()) | {"nodes", "edges"}
        graph = _salvage(Graph, top, bad, {"id": "graph"} if "id" in bad else {})

    nodes: list[Node] = []
    node_pos: list[int] = []
    broken: dict[str, frozenset[str]] = {}
    lost_types: set[str] = set()
    lost_nodes = 0
    for i, raw in enumerate(raw_nodes if isinstance(raw_nodes, list) else ()):
        node, node_problems, bad = _parse_node(raw, i)
        problems += node_problems
        if node is None:
            lost_nodes += 1
            raw_type = raw.get("type") if isinstance(raw, dict) else None
            lost_types.add(raw_type if isinstance(raw_type, str) and "type" not in bad else "*")
            continue
        if bad:
            broken[node.id] = broken.get(node.id, frozenset()) | bad
            if "type" in bad:
                lost_types.add("*")
        nodes.append(node)
        node_pos.append(i)

    edges: list[Edge] = []
    edge_pos: list[int] = []
    lost_edges: list[tuple[str | None, str | None]] = []
    for i, raw in enumerate(raw_edges if isinstance(raw_edges, list) else ()):
        edge, edge_problems, ends = _parse_edge(raw, i)
        problems += edge_problems
        if edge is None:
            lost_edges.append(ends)
        else:
            edges.append(edge)
            edge_pos.append(i)

    # In the order pydantic reports them: the graph's fields in definition order, then unknown ones.
    order = {name: k for k, name in enumerate(Graph.model_fields)}
    problems.sort(key=lambda p: order.get(re.split(r"[.\[]", p.path, maxsplit=1)[0], len(order)))
    if not (isinstance(raw_nodes, list) and isinstance(raw_edges, list)):
        return ParseReport(problems)  # the graph's structure is unknown: nothing to check
    graph.nodes, graph.edges = nodes, edges
    graph._invalidate()
    return ParseReport(
        problems,
        graph,
        tuple(node_pos),
        tuple(edge_pos),
        broken,
        frozenset(lost_types),
        lost_nodes,
        tuple(lost_edges),
    )


_M = TypeVar("_M", bound=BaseModel)


def _bad_fields(errors: list[ErrorDetails]) -> frozenset[str]:
    return frozenset(str(err["loc"][0]) for err in errors if err["loc"])


def _salvage(
    model: type[_M], raw: dict[str, Any], bad: frozenset[str], stand_ins: dict[str, Any]
) -> _M:
    """``model`` from the fields of ``raw`` that parsed, ``stand_ins`` for required ones."""
    kept = {k: v for k, v in raw.items() if k in model.model_fields and k not in bad}
    try:
        return model.model_validate({**kept, **stand_ins})
    except ValidationError:  # pragma: no cover - each kept field parsed on its own already
        return model.model_construct(**stand_ins)


def _parse_node(raw: Any, i: int) -> tuple[Node | None, list[Problem], frozenset[str]]:
    """The node (``None`` when its id cannot be read), its problems and its bad fields."""
    where = f"nodes[{i}]"
    if not isinstance(raw, dict):
        message = f"a node must be an object with 'id' and 'type', got {_show(raw)}"
        return None, [Problem("bad_type", where, message)], frozenset()
    try:
        return Node.model_validate(raw), [], frozenset()
    except ValidationError as e:
        errors = e.errors()
    bad = _bad_fields(errors)
    node_id = raw.get("id")
    subject = f"node {node_id!r}: " if isinstance(node_id, str) and "id" not in bad else ""
    problems = translate_errors(errors, Node, where, subject)
    if not isinstance(node_id, str):
        return None, problems, bad
    # A node whose id can be read stays in the graph, so that edges to it are not "dangling".
    kept = _salvage(Node, raw, bad, {"id": "placeholder", "type": "placeholder"})
    node_type = raw["type"] if "type" not in bad else ""
    return kept.model_copy(update={"id": node_id, "type": node_type}), problems, bad


def _parse_edge(
    raw: Any, i: int
) -> tuple[Edge | None, list[Problem], tuple[str | None, str | None]]:
    """The edge (``None`` when an end cannot be read), its problems and its readable ends."""
    where = f"edges[{i}]"
    if not isinstance(raw, dict):
        message = f"an edge must be an object with 'source' and 'target', got {_show(raw)}"
        return None, [Problem("bad_type", where, message)], (None, None)
    try:
        edge = Edge.model_validate(raw)
        return edge, [], (edge.source, edge.target)
    except ValidationError as e:
        errors = e.errors()
    bad = _bad_fields(errors)
    source, target = (
        v if isinstance(v := raw.get(end), str) and end not in bad else None
        for end in ("source", "target")
    )
    subject = f"edge {source}->{target}: " if source is not None and target is not None else ""
    problems = translate_errors(errors, Edge, where, subject)
    if source is None or target is None:
        return None, problems, (source, target)
    kept = _salvage(Edge, raw, bad, {"source": source, "target": target})
    if "condition" in bad:
        kept = kept.model_copy(update={"condition": _salvage_condition(raw["condition"])})
    return kept, problems, (source, target)


# Stands in for a condition that failed to parse: it reads no path and is not an `otherwise`,
# so the edge still counts as conditional and no follow-on problem is made up about it.
_UNKNOWN_CONDITION = Condition.model_construct(type="field")


def _salvage_condition(raw: Any) -> Condition:
    """What can be read of a condition that failed to parse: the ``all``/``any``/``not``
    around its broken parts and the paths of its field conditions, so that validation still
    checks the rest (a path naming no node); every broken part becomes a stand-in."""
    try:
        return Condition.model_validate(raw)
    except ValidationError:
        pass
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("all", "any", "not") and isinstance(subs := raw.get("conditions"), list):
        parts = tuple(_salvage_condition(c) for c in subs)
        return Condition.model_construct(type=kind, conditions=parts)
    if kind == "field" and isinstance(path := raw.get("path"), str):
        try:
            parse_path(path)  # a bad path is reported already: leave it out
        except PathError:
            return _UNKNOWN_CONDITION
        return Condition.model_construct(type="field", path=path)
    return _UNKNOWN_CONDITION


# --- pydantic's errors, translated ------------------------------------------------------------

# Codes our own validators raise (PydanticCustomError): their message is already plain words.
_OWN_CODES = frozenset(
    {"bad_node_id", "bad_join", "bad_condition", "bad_path", "missing_field", "bad_value"}
)


@dataclass(slots=True)
class _Spot:
    """Where a pydantic error location points in the model: path, field and its type."""

    path: str = ""  # ".retry.max_attempts", "[2].condition.op"
    label: str = ""  # the field (and any item index) the error is about: "retry_on[0]"
    owner: type[BaseModel] | None = None  # the model that has the field
    tp: Any = None  # the type expected at this spot
    info: FieldInfo | None = None  # the field's definition, when the spot is the field itself
    union: bool = False  # the error is one member's of several alternatives


def _members(tp: Any) -> list[Any]:
    """The alternatives of a union type without ``None`` (``[tp]`` for any other type)."""
    if get_origin(tp) in (Union, UnionType):
        return [a for a in get_args(tp) if a is not type(None)]
    return [tp]


def _item_type(tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (list, tuple) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return Any


def _find(root: type[BaseModel], loc: tuple[int | str, ...]) -> _Spot:
    spot = _Spot(tp=root)
    for key in loc:
        members = _members(spot.tp)
        if len(members) > 1 and isinstance(key, str):
            spot.union, spot.tp = True, Any  # pydantic names the member: not a key of the data
            continue
        tp = members[0]
        if isinstance(key, int):
            spot.path += f"[{key}]"
            spot.label += f"[{key}]"
            spot.tp, spot.info = _item_type(tp), None
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            spot.path += f".{key}"
            spot.owner, spot.label, spot.info = tp, key, tp.model_fields.get(key)
            spot.tp = spot.info.annotation if spot.info is not None else Any
        else:
            spot.path += f".{key}"
            spot.label += f".{key}"
            spot.tp, spot.info = _item_type(tp), None
    return spot


def translate_errors(
    errors: list[ErrorDetails], root: type[BaseModel], base: str, subject: str
) -> list[Problem]:
    """Plain problems for pydantic's ``errors`` on one item (``root`` at path ``base``)."""
    problems: list[Problem] = []
    unions: set[str] = set()
    for err in errors:
        spot = _find(root, err["loc"])
        path = (base + spot.path).removeprefix(".") or "graph"
        if spot.union:
            if path in unions:
                continue  # one problem per field, not one per alternative it failed
            unions.add(path)
        problems.append(_problem(err, spot, path, subject))
    return problems


def _problem(err: ErrorDetails, spot: _Spot, path: str, subject: str) -> Problem:
    kind, ctx, label = err["type"], err.get("ctx") or {}, spot.label or "value"
    found = _show(err["input"])
    if kind in _OWN_CODES:
        at = ctx.get("at")
        return Problem(kind, f"{path}.{at}" if at else path, subject + err["msg"])
    if kind == "missing":
        return Problem(
            "missing_field",
            path,
            f"{subject}required field {label!r} is missing (it must be {_allowed(spot)})",
        )
    if kind == "extra_forbidden":
        known = list(spot.owner.model_fields) if spot.owner is not None else []
        return Problem(
            "unknown_field",
            path,
            f"{subject}unknown field {label!r} (set to {found}){_suggest(label, known)}; "
            f"known fields: {', '.join(known)}",
        )
    if spot.owner is Condition and kind == "literal_error" and label in ("op", "type"):
        what, code = (
            ("operator", "unknown_op")
            if label == "op"
            else ("condition type", "unknown_condition_type")
        )
        names = [str(v) for m in _members(spot.tp) for v in get_args(m)]
        value = err["input"]
        hint = _suggest(value, names) if isinstance(value, str) else ""
        return Problem(
            code, path, f"{subject}unknown {what} {found}{hint}; known {what}s: {', '.join(names)}"
        )
    if spot.owner is Node and label == "join":
        return Problem("bad_join", path, f"{subject}{JOIN_RULE}, got {found}")
    is_type = kind.endswith(("_type", "_parsing")) or kind == "int_from_float"
    return Problem(
        "bad_type" if is_type else "bad_value",
        path,
        f"{subject}{label} must be {_allowed(spot)}, got {found}",
    )


def _allowed(spot: _Spot) -> str:
    if spot.info is not None:
        return _describe(spot.info.annotation, spot.info.metadata)
    return _describe(spot.tp, [])


def _describe(tp: Any, metadata: list[Any]) -> str:
    """What a value of type ``tp`` looks like, in words: "a whole number from 1 to 1000"."""
    members = _members(tp)
    if len(members) > 1:
        return " or ".join(_describe(m, []) for m in members)
    tp = members[0]
    origin = get_origin(tp)
    if origin is Literal:
        return _one_of(get_args(tp))
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a non-empty string" if any(isinstance(m, MinLen) for m in metadata) else "a string"
    if tp in (int, float):
        return ("a whole number" if tp is int else "a number") + _bounds(metadata)
    if tp is dict or origin is dict:
        return "an object"
    if origin in (list, tuple):
        return f"a list of {_PLURALS.get(_item_type(tp), 'values')}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _NOUNS.get(tp, "an object")
    return "a JSON value"


def _bounds(metadata: list[Any]) -> str:
    low = next((f"{m.ge}" for m in metadata if isinstance(m, Ge)), None)
    high = next((f"{m.le}" for m in metadata if isinstance(m, Le)), None)
    if low is not None and high is not None:
        return f" from {low} to {high}"
    parts = [f">= {low}"] if low is not None else []
    parts += [f"> {m.gt}" for m in metadata if isinstance(m, Gt)]
    parts += [f"<= {high}"] if high is not None else []
    parts += [f"< {m.lt}" for m in metadata if isinstance(m, Lt)]
    return " " + " and ".join(parts) if parts else ""


def _one_of(values: tuple[Any, ...]) -> str:
    shown = [repr(v) for v in values]
    if len(shown) <= 2:
        return " or ".join(shown)
    return "one of " + ", ".join(shown)


def _show(value: Any) -> str:
    """The offending value, short: JSON's null/true/false, anything else repr'd."""
    if value is None or isinstance(value, bool):
        return orjson.dumps(value).decode()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_NOUNS: dict[type, str] = {
    Node: "a node object with 'id' and 'type'",
    Edge: "an edge object with 'source' and 'target'",
    Condition: "a condition object such as {'type': 'otherwise'}",
    RetryPolicy: "a retry object such as {'max_attempts': 3}",
    WaitPolicy: "a wait object such as {'timeout_s': 60}",
    Compensation: "a compensate object such as {'type': 'refund'}",
    Trigger: "a trigger object such as {'type': 'manual'}",
}
_PLURALS: dict[Any, str] = {str: "strings", Node: "nodes", Edge: "edges", Condition: "conditions"}
