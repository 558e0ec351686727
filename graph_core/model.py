"""The graph model: ``Graph``, ``Node``, ``Edge``, ``Trigger``, ``RetryPolicy``.

Graphs are plain JSON data (a superset of roomkit-graph 0.4's ``Graph.to_dict()``). The models
are pydantic v2; ``Graph.from_dict`` turns every structural and semantic problem into one
``GraphValidationError`` listing them all: when the one-pass pydantic parse fails, the graph is
parsed again node by node and edge by edge (``graph_core.parsing``) and pydantic's errors are put in
plain words, each naming its path, the value found and what is allowed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from graph_core.conditions import Condition
from graph_core.errors import GraphValidationError, Problem

__all__ = [
    "CONTROL_TYPES",
    "JOIN_RULE",
    "Edge",
    "Graph",
    "JoinSpec",
    "Node",
    "RetryPolicy",
    "Trigger",
    "WaitPolicy",
]

# Node types the dispatcher executes itself (pure control flow, no worker job).
CONTROL_TYPES = frozenset({"start", "end", "parallel", "human", "delay", "map", "subgraph"})

_NODE_ID = re.compile(r"^[^.\s{}|]+$")
JoinSpec = Literal["all", "any"] | int
JOIN_RULE = "join must be 'all', 'any' or a whole number >= 1"


class RetryPolicy(BaseModel):
    """How a failed node is retried. ``max_attempts`` counts the first attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=1, ge=1, le=1000)
    backoff: Literal["fixed", "exponential"] = "exponential"
    initial_delay_s: float = Field(default=1.0, ge=0)
    max_delay_s: float = Field(default=60.0, ge=0)
    jitter: float = Field(default=0.0, ge=0, le=1)
    retry_on: list[str] | None = None  # error types that are retried (None: all)
    no_retry_on: list[str] = Field(default_factory=list)  # error types never retried


class WaitPolicy(BaseModel):
    """What happens when an approval does not arrive in time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(gt=0)
    on_timeout: Literal["reject", "approve", "fail", "escalate"] = "fail"
    escalate_to: str | None = None


class Trigger(BaseModel):
    """How runs of the graph start: ``manual``, or one that fires (``scheduled``, ``event``,
    ``webhook``: graph_core.triggers reads their fields); other types are kept as they are."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = "manual"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Compensation(BaseModel):
    """What undoes a node's effect (a saga step): a handler of ``type`` run with ``config``
    (templates rendered) and the node's output as ``ctx.original_output``, when the run
    fails or is cancelled and the graph's ``on_failure`` / ``on_cancel`` is ``compensate``."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy | None = None  # default: the node's, then the graph's
    timeout_s: float | None = Field(default=None, gt=0)
    queue: str | None = None  # default: the node's

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)


class Node(BaseModel):
    """A step. ``Node("triage", type="agent", config={...})``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = None
    queue: str | None = None
    retry: RetryPolicy | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    max_visits: int | None = Field(default=None, ge=1)
    fan_out: bool = False
    join: JoinSpec = "all"
    wait: WaitPolicy | None = None
    compensate: Compensation | None = None  # the saga step that undoes this node
    # JSON Schemas: its rendered config (what the handler gets) and its output are checked
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None

    def __init__(self, id: str | None = None, /, **data: Any) -> None:
        if id is not None:
            data["id"] = id
        super().__init__(**data)

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _NODE_ID.match(v) or v == "input":
            raise PydanticCustomError(
                "bad_node_id",
                f"node id {v!r} is not allowed: an id must be non-empty, must not be 'input' "
                "and must not contain dots, spaces, braces or '|'",
            )
        return v

    @field_validator("type")
    @classmethod
    def _check_type(cls, v: str) -> str:
        if not v or not v.strip():
            raise PydanticCustomError(
                "bad_value", f"type must be a non-empty string such as 'agent', got {v!r}"
            )
        return v

    @field_validator("join")
    @classmethod
    def _check_join(cls, v: JoinSpec) -> JoinSpec:
        if isinstance(v, int) and v < 1:
            raise PydanticCustomError("bad_join", f"{JOIN_RULE}, got {v!r}")
        return v

    @property
    def is_control(self) -> bool:
        return self.type in CONTROL_TYPES

    @property
    def job_type(self) -> str | None:
        """The handler type a worker runs for this node: its own type, a map's inner node
        type, or None (a control node that no worker runs)."""
        if self.type == "map" and "node" in self.config:
            inner = self.config.get("node")
            kind = inner.get("type") if isinstance(inner, dict) else None
            return kind if isinstance(kind, str) else None
        return None if self.is_control else self.type

    def item_node(self) -> Node:
        """A map node as its items run: its inner node's type and config under the map's id
        (queue, timeout and retry policy are the map node's); the node itself if it has none."""
        inner = self.config.get("node") if self.type == "map" else None
        if not isinstance(inner, dict) or not isinstance(inner.get("type"), str):
            return self
        update = {"type": inner["type"], "config": inner.get("config") or {}, "compensate": None}
        return self.model_copy(update=update)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        dumped = self.model_dump(mode="json", exclude_defaults=True, exclude={"id", "type"})
        data.update(dumped)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        return cls.model_validate(data)


class Edge(BaseModel):
    """A connection. ``Edge("triage", "escalate", condition=Condition.field(...).eq(...))``."""

    model_config = ConfigDict(extra="forbid")

    source: str
    target: str
    condition: Condition | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def __init__(
        self, source: str | None = None, target: str | None = None, /, **data: Any
    ) -> None:
        if source is not None:
            data["source"] = source
        if target is not None:
            data["target"] = target
        super().__init__(**data)

    @field_validator("condition", mode="before")
    @classmethod
    def _empty_condition_is_none(cls, v: Any) -> Any:
        return None if v in ({}, None) else v  # roomkit-graph treats {} as "no condition"

    @property
    def label(self) -> str:
        return f"{self.source}->{self.target}"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.source, "target": self.target}
        if self.condition is not None:
            data["condition"] = self.condition.to_dict()
        if self.metadata:
            data["metadata"] = self.metadata
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Edge:
        return cls.model_validate(data)


class Graph(BaseModel):
    """A workflow graph: nodes, edges and run-wide limits. Build fluently or load JSON."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str = ""
    version: int = Field(default=1, ge=1)
    description: str | None = None
    trigger: Trigger = Field(default_factory=Trigger)
    triggers: list[Trigger] = Field(default_factory=list)  # more triggers (graph_core.triggers)
    nodes: list[Node] = Field(default_factory=list)
    edges: list[Edge] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    max_steps: int = Field(default=100_000, ge=1)
    retry: RetryPolicy | None = None  # default for nodes without their own
    timeout_s: float | None = Field(default=None, gt=0)  # whole-run deadline
    # A run that fails (or is cancelled) first runs its completed nodes' compensations.
    on_failure: Literal["fail", "compensate"] = "fail"
    on_cancel: Literal["cancel", "compensate"] = "cancel"

    _index: dict[str, Node] | None = PrivateAttr(default=None)
    _topology: Any = PrivateAttr(default=None)
    _subgraph_refs: list[tuple[str, str, int | None]] | None = PrivateAttr(default=None)

    # --- builder ------------------------------------------------------------------------

    def add_node(self, node: Node) -> Graph:
        self.nodes.append(node)
        self._invalidate()
        return self

    def add_nodes(self, *nodes: Node) -> Graph:
        self.nodes.extend(nodes)
        self._invalidate()
        return self

    def add_edge(self, edge: Edge) -> Graph:
        self.edges.append(edge)
        self._invalidate()
        return self

    def add_edges(self, *edges: Edge) -> Graph:
        self.edges.extend(edges)
        self._invalidate()
        return self

    def connect(self, *node_ids: str) -> Graph:
        """Chain unconditional edges: ``connect("a", "b", "c")`` adds a->b and b->c."""
        for a, b in itertools.pairwise(node_ids):
            self.edges.append(Edge(a, b))
        self._invalidate()
        return self

    def _invalidate(self) -> None:
        self._index = None
        self._topology = None
        self._subgraph_refs = None

    # --- lookup -------------------------------------------------------------------------

    def cached(self) -> dict[str, Any]:
        """The graph's derived data (``_index``, ``_topology``), read directly: pydantic's
        private-attribute access costs microseconds per read, and the engine and the worker
        look nodes up several times per event."""
        private = self.__pydantic_private__
        if private is None:  # pragma: no cover - pydantic always sets it for this model
            private = self.__pydantic_private__ = {
                "_index": None,
                "_topology": None,
                "_subgraph_refs": None,
            }
        return private

    def _node_index(self) -> dict[str, Node]:
        private = self.cached()
        index: dict[str, Node] | None = private["_index"]
        if index is None:
            index = private["_index"] = {n.id: n for n in self.nodes}
        return index

    def node(self, node_id: str) -> Node:
        """The node with this id; ``KeyError`` naming it when absent."""
        try:
            return self._node_index()[node_id]
        except KeyError:
            raise KeyError(f"graph {self.id!r} has no node {node_id!r}") from None

    def has_node(self, node_id: str) -> bool:
        return node_id in self._node_index()

    def retry_for(self, node: Node) -> RetryPolicy:
        return node.retry or self.retry or RetryPolicy()

    # --- serialization ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "name": self.name, "version": self.version}
        if self.description is not None:
            data["description"] = self.description
        data["trigger"] = self.trigger.to_dict()
        if self.triggers:
            data["triggers"] = [t.to_dict() for t in self.triggers]
        data["nodes"] = [n.to_dict() for n in self.nodes]
        data["edges"] = [e.to_dict() for e in self.edges]
        if self.metadata:
            data["metadata"] = self.metadata
        if self.max_steps != 100_000:
            data["max_steps"] = self.max_steps
        if self.retry is not None:
            data["retry"] = self.retry.model_dump(mode="json", exclude_defaults=True)
        if self.timeout_s is not None:
            data["timeout_s"] = self.timeout_s
        if self.on_failure != "fail":
            data["on_failure"] = self.on_failure
        if self.on_cancel != "cancel":
            data["on_cancel"] = self.on_cancel
        return data

    def subgraph_refs(self) -> list[tuple[str, str, int | None]]:
        """The graphs this graph runs as child runs, where named statically (not by a
        template): (node id, graph id, version or None for the latest), in graph order.
        Computed once per graph object (every submission of a run reads them)."""
        cache = self.cached()
        if cache["_subgraph_refs"] is not None:
            found: list[tuple[str, str, int | None]] = cache["_subgraph_refs"]
            return found
        refs = []
        for n in self.nodes:
            graph = n.config.get("graph") if n.type in ("subgraph", "map") else None
            if isinstance(graph, str) and graph and "{{" not in graph:
                version = n.config.get("version")
                pinned = version if isinstance(version, int) and n.type == "subgraph" else None
                refs.append((n.id, graph, pinned))
        cache["_subgraph_refs"] = refs
        return refs

    def compensable(self) -> list[str]:
        """The ids of the nodes that declare a compensation, in graph order."""
        return [n.id for n in self.nodes if n.compensate is not None]

    def to_json(self, *, indent: bool = False) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 if indent else 0)

    @classmethod
    def from_dict(cls, data: Any, *, validate: bool = True) -> Graph:
        """Load a graph dict; raise ``GraphValidationError`` listing every problem.

        The problems are the ones ``graph_core.validation.validate`` returns: parse problems
        (each node and edge is checked on its own) and, with ``validate``, semantic ones too.
        """
        if not isinstance(data, dict):
            if not isinstance(data, Mapping):
                message = f"a graph must be an object, got {_kind(data)}"
                raise GraphValidationError([Problem("not_an_object", "graph", message)])
            data = dict(data)
        try:
            # The fast path: loading a valid graph (worker and dispatcher caches do it often)
            # costs one pydantic pass; only a graph that fails it is parsed item by item.
            graph = cls.model_validate(data)
        except ValidationError as e:
            from graph_core.parsing import parse_graph, translate_errors

            report = parse_graph(data)
            # (Item by item finds what the whole pass did; the fallback is only a safety net.)
            problems = report.problems or translate_errors(e.errors(), Graph, "", "")
            if validate and report.graph is not None:
                from graph_core.validation import validate_report

                problems = problems + validate_report(report)
            raise GraphValidationError(problems, graph_id=_str_or_none(data.get("id"))) from e
        if validate:
            from graph_core.validation import validate_graph

            problems = validate_graph(graph)
            if problems:
                raise GraphValidationError(problems, graph_id=graph.id)
        return graph

    @classmethod
    def from_json(cls, raw: str | bytes, *, validate: bool = True) -> Graph:
        """Load a graph from JSON text; raise ``GraphValidationError`` listing every problem."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise GraphValidationError(
                [Problem("bad_json", "graph", f"not valid JSON: {e}")]
            ) from e
        return cls.from_dict(data, validate=validate)

    def validate_graph(self) -> Graph:
        """Raise ``GraphValidationError`` if this (builder-made) graph is invalid."""
        from graph_core.validation import validate_graph

        problems = validate_graph(self)
        if problems:
            raise GraphValidationError(problems, graph_id=self.id)
        return self


def _kind(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None
