"""What a handler receives (``NodeContext``) and may return (``NodeResult``).

A worker preloads, before the handler runs, the run data a node is likely to read: the run
input and the latest outputs of the node's direct predecessors, of every node its config
templates mention, and of the nodes it lists in ``config["reads"]``. ``ctx.get(path)`` reads
that snapshot without I/O; ``await ctx.load(path)`` reads anything else from Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from graph_core.errors import RelaygraphError
from graph_core.messages import JobPayload
from graph_core.model import Node
from graph_core.paths import MISSING, DataSource, ParsedPath, parse_path, resolve
from graph_core.sources import DictSource
from graph_core.templates import render

__all__ = [
    "NodeContext",
    "NodeResult",
    "NonRetryableError",
    "NotPreloaded",
    "PathLoader",
    "Snapshot",
]

Status = Literal["completed", "waiting"]
_STATUSES: frozenset[str] = frozenset({"completed", "waiting"})


class NonRetryableError(Exception):
    """Raise from a handler to fail the node without retries (its retry policy is skipped).

    Any exception with an attribute ``retryable = False`` counts as well.
    """

    retryable = False


class NotPreloaded(RelaygraphError):
    """``ctx.get`` asked for data of a node the worker did not preload for this job (a
    mistake in the handler or graph: retrying cannot help)."""

    retryable = False

    def __init__(self, node_id: str, path: str | None = None, reading: str | None = None) -> None:
        self.node_id = node_id
        self.path = path
        self.reading = reading
        what = f"{path!r}" if path else f"data of node {node_id!r}"
        by = f" for node {reading!r}" if reading else ""
        hint = f"use `await ctx.load({path!r})`" if path else "use `await ctx.load(path)`"
        super().__init__(
            f"{what} was not preloaded{by}: add {node_id!r} to the node's config "
            f"'reads' list, or {hint}"
        )


@dataclass(frozen=True, slots=True)
class NodeResult:
    """A handler's explicit result. Returning a plain value means ``NodeResult(value)``.

    ``status="waiting"`` pauses the run at this node until an approval arrives; ``output``
    is then the prompt shown with the wait.
    """

    output: Any = None
    status: Status = "completed"

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(
                f"NodeResult status must be 'completed' or 'waiting', not {self.status!r} "
                "(raise an exception to fail the node)"
            )


class PathLoader(Protocol):
    """Reads a path of the run from the store, on demand (``ctx.load``)."""

    async def load(self, path: ParsedPath) -> Any:
        """The value at ``path``, or ``MISSING``."""
        ...


class Snapshot:
    """A ``DataSource`` over run data preloaded for one job.

    Data of a node that exists in the graph but was not preloaded raises ``NotPreloaded``
    instead of reading as absent, so a forgotten ``reads`` entry is an error, not a silent
    ``None``. A node the graph does not have reads as absent.
    """

    def __init__(
        self,
        run_input: Any,
        graph_nodes: Collection[str],
        visits: Mapping[str, tuple[int, int]],
        outputs: Mapping[tuple[str, int], Any],
        reading: str | None = None,
    ) -> None:
        self._input = run_input
        self._graph_nodes = graph_nodes
        self._visits = dict(visits)  # node id -> (visits begun, latest completed visit)
        self._outputs = dict(outputs)  # (node id, visit) -> output (MISSING when none)
        self._reading = reading

    def run_input(self) -> Any:
        return self._input

    def _record(self, node_id: str) -> tuple[int, int] | None:
        if node_id not in self._graph_nodes:
            return None
        try:
            return self._visits[node_id]
        except KeyError:
            raise NotPreloaded(node_id, reading=self._reading) from None

    def latest_output(self, node_id: str) -> Any:
        rec = self._record(node_id)
        if rec is None or rec[1] < 1:
            return MISSING
        return self._outputs.get((node_id, rec[1]), MISSING)

    def output_at(self, node_id: str, visit: int) -> Any:
        rec = self._record(node_id)
        if rec is None or visit > rec[0]:
            return MISSING
        try:
            return self._outputs[(node_id, visit)]
        except KeyError:
            raise NotPreloaded(
                node_id, path=f"{node_id}.outputs.{visit}", reading=self._reading
            ) from None

    def visit_count(self, node_id: str) -> int:
        rec = self._record(node_id)
        return 0 if rec is None else rec[0]

    @property
    def node_ids(self) -> list[str]:
        """The nodes whose data is in the snapshot."""
        return sorted(self._visits)


class _SourceLoader:
    """``ctx.load`` for a context without a store: resolves against its data source."""

    def __init__(self, source: DataSource) -> None:
        self._source = source

    async def load(self, path: ParsedPath) -> Any:
        return resolve(path, self._source)


class _NodeLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every record with ``[run/node#visit.attempt]`` and attaches them as extras."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        run, node = extra.get("run_id"), extra.get("node_id")
        prefix = f"[{run}/{node}#{extra.get('visit')}.{extra.get('attempt')}]"
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"{prefix} {msg}", kwargs


class NodeContext:
    """Everything a handler gets about the job it runs.

    Attributes: ``run_id``, ``node`` (its ``config`` templates already rendered),
    ``config`` (``node.config``), ``input`` (the run's input), ``visit`` and ``attempt``
    (1-based), ``idempotency_key`` (stable across the attempts of one visit: key side
    effects on it), ``graph_id``/``graph_version`` and ``logger``. In a compensation (a
    saga step undoing a node: ``compensating`` is True), ``original_output`` is the output of
    the node being undone. In a ``map`` node's item, ``item`` is the item and ``index`` its
    position in the list (``index`` is None outside a map).
    """

    __slots__ = (
        "_loader",
        "_source",
        "attempt",
        "compensating",
        "graph_id",
        "graph_version",
        "idempotency_key",
        "index",
        "input",
        "item",
        "logger",
        "node",
        "original_output",
        "run_id",
        "visit",
    )

    def __init__(
        self,
        *,
        run_id: str,
        node: Node,
        input: Any,  # the run's input
        visit: int,
        attempt: int,
        idempotency_key: str,
        source: DataSource,
        loader: PathLoader | None = None,
        graph_id: str = "",
        graph_version: int = 0,
        logger: logging.Logger | None = None,
        compensating: bool = False,
        original_output: Any = None,
        item: Any = None,
        index: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.item = item
        self.index = index
        self.compensating = compensating
        self.original_output = original_output
        self.node = node
        self.input = input
        self.visit = visit
        self.attempt = attempt
        self.idempotency_key = idempotency_key
        self.graph_id = graph_id
        self.graph_version = graph_version
        self._source = source
        self._loader: PathLoader = loader if loader is not None else _SourceLoader(source)
        base = logger or logging.getLogger(f"relaygraph.node.{node.type}")
        self.logger: logging.LoggerAdapter[logging.Logger] = _NodeLogger(
            base, {"run_id": run_id, "node_id": node.id, "visit": visit, "attempt": attempt}
        )

    @property
    def node_id(self) -> str:
        return self.node.id

    @property
    def config(self) -> dict[str, Any]:
        """The node's config, templates rendered."""
        return self.node.config

    @property
    def source(self) -> DataSource:
        """The preloaded run data (what ``get`` and conditions resolve paths against)."""
        return self._source

    def get(self, path: str, default: Any = None) -> Any:
        """The value at ``path`` (``input.x``, ``node.output.x``, ``node.outputs.2.x``,
        ``node.visits``) in the preloaded data, or ``default`` when it is absent.

        Raises ``PathError`` for a malformed path and ``NotPreloaded`` for a node whose data
        the worker did not preload (list it in ``config["reads"]`` or use ``load``).
        """
        parsed = parse_path(path)
        try:
            value = resolve(parsed, self._source)
        except NotPreloaded as e:
            raise NotPreloaded(e.node_id, path=path, reading=self.node.id) from None
        return default if value is MISSING else value

    async def load(self, path: str, default: Any = None) -> Any:
        """Like ``get`` but reads the current value from the store: works for any node."""
        value = await self._loader.load(parse_path(path))
        return default if value is MISSING else value

    @classmethod
    def local(
        cls,
        node: Node,
        *,
        input: Any = None,
        outputs: Mapping[str, Sequence[Any]] | None = None,
        run_id: str = "local",
        visit: int = 1,
        attempt: int = 1,
        render_config: bool = True,
    ) -> NodeContext:
        """A context over in-memory data, for testing handlers without Redis.

        ``outputs`` maps node ids to the outputs of their completed visits, first visit
        first. The node's config is rendered against that data, as a worker would.
        """
        source = DictSource(input, outputs)
        if render_config and node.config:
            node = node.model_copy(update={"config": render(node.config, source)})
        key = JobPayload(
            run_id=run_id,
            graph_id="local",
            graph_version=1,
            node_id=node.id,
            visit=visit,
            attempt=attempt,
        ).idempotency_key
        return cls(
            run_id=run_id,
            node=node,
            input=input,
            visit=visit,
            attempt=attempt,
            idempotency_key=key,
            source=source,
        )

    def __repr__(self) -> str:
        return (
            f"NodeContext(run_id={self.run_id!r}, node={self.node.id!r}, type={self.node.type!r}, "
            f"visit={self.visit}, attempt={self.attempt})"
        )
