"""What a job reads before its handler runs: the graph (cached) and a snapshot of run data.

The snapshot holds the run input and the latest outputs of the nodes a job is likely to read
(see ``plan_reads``). One script (``queue_latest_read``) reads those nodes' records and
latest outputs together, in the round trip that precedes the handler anyway; only outputs
of explicit visits (``outputs.<node>.<n>`` paths) cost another. ``StoreLoader`` serves
``ctx.load`` for everything else, one path at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from graph_core.errors import PathError, TemplateError
from graph_core.keys import OUTPUT_FIELD_SEP, RunKeys
from graph_core.model import Graph, Node
from graph_core.paths import (
    KIND_OUTPUT,
    KIND_OUTPUTS,
    KIND_VISITS,
    MISSING,
    ROOT_INPUT,
    ParsedPath,
    parse_path,
    walk,
)
from graph_core.state import NodeRecord
from graph_core.templates import template_paths
from graph_core.topology import topology
from worker.context import Snapshot
from worker.registry import HandlerSpec

__all__ = [
    "LATEST_LUA",
    "LATEST_SCRIPT",
    "GraphCache",
    "Plan",
    "StoreLoader",
    "load_snapshot",
    "parse_latest_read",
    "plan_reads",
    "queue_latest_read",
]

logger = logging.getLogger("relaygraph.worker")


# --- graph cache --------------------------------------------------------------------------


class GraphCache:
    """Parsed graphs by (id, version), least recently used dropped first.

    Graph versions are immutable once registered, so an entry never goes stale.
    """

    def __init__(self, maxsize: int = 64) -> None:
        if maxsize < 1:
            raise ValueError("GraphCache maxsize must be >= 1")
        self.maxsize = maxsize
        self._graphs: OrderedDict[tuple[str, int], Graph] = OrderedDict()
        self._plans: dict[tuple[str, int], dict[str, Plan]] = {}

    def plan(
        self, graph: Graph, node: Node, spec: HandlerSpec | None, *, item: bool = False
    ) -> Plan:
        """``plan_reads`` of a node, computed once per graph version (a graph, its config
        templates and the worker's handlers do not change); treat it as read-only. ``item``:
        ``node`` is a map node and the job runs its inner node on one item (the map's
        predecessors are not read); ``spec`` is then the inner node's handler's."""
        key = (graph.id, graph.version)
        if self._graphs.get(key) is not graph:  # not this cache's graph: nothing to keep
            return _plan_of(graph, node, spec, item)
        plans = self._plans.setdefault(key, {})
        slot = f"{node.id}|item" if item else node.id  # node ids have no '|'
        plan = plans.get(slot)
        if plan is None:
            plan = plans[slot] = _plan_of(graph, node, spec, item)
        return plan

    def get(self, graph_id: str, version: int) -> Graph | None:
        graph = self._graphs.get((graph_id, version))
        if graph is not None:
            self._graphs.move_to_end((graph_id, version))
        return graph

    def put(self, graph: Graph) -> Graph:
        self._graphs[(graph.id, graph.version)] = graph
        self._graphs.move_to_end((graph.id, graph.version))
        self._plans.pop((graph.id, graph.version), None)  # a graph put again is planned again
        while len(self._graphs) > self.maxsize:
            evicted, _ = self._graphs.popitem(last=False)
            self._plans.pop(evicted, None)
        return graph

    def __len__(self) -> int:
        return len(self._graphs)


# --- what to preload ----------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    nodes: list[str] = field(default_factory=list)  # nodes whose latest output to load
    visits: set[tuple[str, int]] = field(default_factory=set)  # explicit (node, visit) reads


def _plan_of(graph: Graph, node: Node, spec: HandlerSpec | None, item: bool) -> Plan:
    if item:  # the map's inner node, on one item: not the list it is one item of
        return plan_reads(graph, node.item_node(), spec, predecessors=False)
    return plan_reads(graph, node, spec)


def plan_reads(
    graph: Graph, node: Node, spec: HandlerSpec | None, *, predecessors: bool = True
) -> Plan:
    """The nodes a job is likely to read: direct predecessors (for a parallel child, its
    parent's too; not for a map's item, whose predecessor is usually the list it is one
    item of), nodes named in config templates, in ``config["reads"]`` and by the handler's
    ``reads``. O(degree + config size), never O(graph) per job."""
    topo = topology(graph)
    ids: dict[str, None] = {}
    for target in (node.id, node.parent) if predecessors else ():
        if target is not None:
            ids.update(dict.fromkeys(ref.edge.source for ref in topo.in_edges.get(target, ())))
    wanted: list[str] = []
    with contextlib.suppress(TemplateError):  # rendering reports it, naming the node
        wanted.extend(template_paths(node.config))
    reads = node.config.get("reads", [])
    if isinstance(reads, list):
        wanted.extend(r for r in reads if isinstance(r, str))
    if spec is not None and spec.reads is not None:
        try:
            wanted.extend(spec.reads(node))
        except Exception:
            logger.warning(
                "reads() of handler %r failed for node %r", spec.type, node.id, exc_info=True
            )
    plan = Plan()
    for item in wanted:
        if "." not in item:
            ids[item] = None  # a bare node id
            continue
        try:
            parsed = parse_path(item)
        except PathError:
            continue
        if parsed.node_id is not None:
            ids[parsed.node_id] = None
            if parsed.kind == KIND_OUTPUTS and parsed.visit is not None:
                plan.visits.add((parsed.node_id, parsed.visit))
    plan.nodes = [nid for nid in ids if graph.has_node(nid)]
    return plan


# --- loading ------------------------------------------------------------------------------


def _json_or_missing(raw: bytes | None) -> Any:
    return MISSING if raw is None else orjson.loads(raw)


# ``latest(nodes_key, outputs_key, ids, first, out, lead)`` appends to ``out`` the record of
# each node ``ids[first..]`` and its latest output (``RunKeys.output_field`` of its
# ``last_ok_visit``, which the record omits while it is 0): record, output, record, ...; and
# returns the record of node ``lead`` (false without one), read in the same HMGET. One HMGET
# of the records and one of the outputs per chunk of nodes, however many there are.
# Shared by LATEST_SCRIPT and the worker's claim script.
LATEST_LUA = """
local function latest(nodes_key, outputs_key, ids, first, out, lead)
  local lead_rec = false
  local lo = first
  repeat
    local hi = math.min(#ids, lo + 499)
    local names = {}
    if lead and lo == first then names[1] = lead end
    for i = lo, hi do names[#names + 1] = ids[i] end
    if #names == 0 then break end
    local recs = redis.call('HMGET', nodes_key, unpack(names))
    local at = 0
    if lead and lo == first then lead_rec, at = recs[1], 1 end
    local fields, slots = {}, {}
    for i = lo, hi do
      local rec = recs[at + i - lo + 1]
      out[#out + 1] = rec
      out[#out + 1] = false
      if rec then
        local ok, decoded = pcall(cjson.decode, rec)  -- corrupt: the worker reports it
        local visit = ok and type(decoded) == 'table' and decoded['last_ok_visit']
        if type(visit) == 'number' and visit >= 1 then
          fields[#fields + 1] = ids[i] .. 'SEP' .. string.format('%d', visit)
          slots[#slots + 1] = #out
        end
      end
    end
    if #fields > 0 then
      local values = redis.call('HMGET', outputs_key, unpack(fields))
      for j, slot in ipairs(slots) do out[slot] = values[j] end
    end
    lo = hi + 1
  until lo > #ids
  return lead_rec
end
""".replace("SEP", OUTPUT_FIELD_SEP)
LATEST_SCRIPT = LATEST_LUA + "local out = {}\nlatest(KEYS[1], KEYS[2], ARGV, 1, out)\nreturn out\n"
LATEST_SHA = hashlib.sha1(LATEST_SCRIPT.encode()).hexdigest()  # the id Redis gives the script


def queue_latest_read(pipe: Any, rk: RunKeys, node_ids: list[str]) -> None:
    """Add the read of ``node_ids``' records and latest outputs to ``pipe`` (by EVALSHA: the
    caller loads ``LATEST_SCRIPT`` and runs the pipeline again on ``NoScriptError``)."""
    pipe.evalsha(LATEST_SHA, 2, rk.nodes, rk.outputs, *node_ids)


def parse_latest_read(
    node_ids: list[str],
    reply: list[Any],
    records: dict[str, NodeRecord],
    outputs: dict[tuple[str, int], Any],
) -> None:
    """Fill ``records`` and ``outputs`` (as ``load_snapshot`` takes them) from the reply."""
    for i, nid in enumerate(node_ids):
        raw_rec, raw_out = reply[2 * i], reply[2 * i + 1]
        if raw_rec is None:
            continue
        rec = records[nid] = NodeRecord.model_validate_json(raw_rec)
        if rec.last_ok_visit >= 1:
            outputs[(nid, rec.last_ok_visit)] = _json_or_missing(raw_out)


async def load_snapshot(
    redis: Any,
    rk: RunKeys,
    graph: Graph,
    node_id: str,
    run_input: Any,
    plan: Plan,
    records: dict[str, NodeRecord],
    outputs: dict[tuple[str, int], Any] | None = None,
) -> Snapshot:
    """Load what ``plan`` names (node records not in ``records`` yet, then the outputs not in
    ``outputs`` yet) into the snapshot that the job's ``ctx.get`` and template rendering
    read."""
    outputs = dict(outputs or {})
    missing = [nid for nid in plan.nodes if nid not in records]
    if missing:
        raws = await redis.hmget(rk.nodes, missing)
        for nid, raw in zip(missing, raws, strict=True):
            if raw is not None:
                records[nid] = NodeRecord.model_validate_json(raw)
    visits: dict[str, tuple[int, int]] = {}
    fields: dict[tuple[str, int], str] = {}
    for nid in plan.nodes:
        rec = records.get(nid) or NodeRecord()
        visits[nid] = (rec.visits, rec.last_ok_visit)
        if rec.last_ok_visit >= 1:
            fields[(nid, rec.last_ok_visit)] = RunKeys.output_field(nid, rec.last_ok_visit)
    for nid, visit in plan.visits:
        if nid in visits and 1 <= visit <= visits[nid][0]:
            fields[(nid, visit)] = RunKeys.output_field(nid, visit)
    unread = {k: f for k, f in fields.items() if k not in outputs}
    if unread:
        raws = await redis.hmget(rk.outputs, list(unread.values()))
        outputs.update((k, _json_or_missing(raw)) for k, raw in zip(unread, raws, strict=True))
    outputs = {k: v for k, v in outputs.items() if k in fields}
    return Snapshot(run_input, _GraphNodes(graph), visits, outputs, reading=node_id)


class _GraphNodes:
    """``in`` over a graph's node ids without building a set per job."""

    def __init__(self, graph: Graph) -> None:
        self._graph = graph

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, str) and self._graph.has_node(node_id)

    def __len__(self) -> int:
        return len(self._graph.nodes)

    def __iter__(self) -> Iterator[str]:
        return (n.id for n in self._graph.nodes)


class StoreLoader:
    """``ctx.load``: one path, read from Redis now."""

    def __init__(self, redis: Redis, rk: RunKeys, graph: Graph, run_input: Any) -> None:
        self._redis: Any = redis  # redis-py 5 annotates results as ``Awaitable[T] | T``
        self._rk, self._graph, self._input = rk, graph, run_input

    async def load(self, path: ParsedPath) -> Any:
        if path.kind == ROOT_INPUT:
            return walk(self._input, path.rest)
        if not self._graph.has_node(path.root):
            return MISSING
        if path.kind == KIND_OUTPUTS:
            visit = path.visit or 1
        else:
            raw = await self._redis.hget(self._rk.nodes, path.root)
            rec = NodeRecord.model_validate_json(raw) if raw is not None else NodeRecord()
            if path.kind == KIND_VISITS:
                return rec.visits
            visit = rec.last_ok_visit
            if path.kind != KIND_OUTPUT or visit < 1:
                return MISSING
        value = _json_or_missing(
            await self._redis.hget(self._rk.outputs, RunKeys.output_field(path.root, visit))
        )
        return MISSING if value is MISSING else walk(value, path.rest)
