"""The run store on Redis: loading what a transition needs, applying it atomically, graphs,
and read models for clients (status, listings).

Layout (all keys from ``graph_core.keys``): per run, ``meta`` (hash: run record JSON, rev and
the stamp of the write, see ``dispatcher.changes.new_stamp``),
``nodes``, ``outputs``, ``joins``, ``loops``, ``active``, ``waits`` (hashes) and ``events``
(stream); globally the graphs hash, run indexes by status, timers, the inbox and the queues.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from dispatcher.changes import StateWrites, pack_changes, state_writes
from dispatcher.loaded import NeedState, RedisView
from dispatcher.prefetch import NOTHING, Prefetch
from graph_core.errors import GraphValidationError, Problem, RelaygraphError
from graph_core.events import ErrorInfo, ParentRef, child_end, history_event
from graph_core.keys import Keys, RunKeys, ShardKeys
from graph_core.messages import dumps, encode_inbox
from graph_core.model import Graph
from graph_core.paths import MISSING
from graph_core.resp import script_pipeline
from graph_core.state import NodeRecord, RunRecord, Transition
from graph_core.triggers import triggers_of

__all__ = [
    "ApplyCall",
    "GraphNotFound",
    "NeedState",
    "RedisView",
    "RunStore",
    "StoreError",
]

log = logging.getLogger("relaygraph.dispatcher")

DEFAULT_RETENTION_S = 7 * 24 * 3600
_LIST_BATCH = 500  # index members read at once when listing a graph's runs in a status

ApplyCall = tuple[list[str], list[str | bytes]]  # apply.lua's keys and arguments


class StoreError(RelaygraphError):
    pass


MAX_VERSIONS_LISTED = 1000  # graph_versions looks at this many versions below the latest


class GraphNotFound(StoreError):
    def __init__(self, graph_id: str, version: int | None) -> None:
        self.graph_id = graph_id
        self.version = version
        v = f" version {version}" if version is not None else ""
        super().__init__(f"graph {graph_id!r}{v} is not registered")


class RunStore:
    """Run state on Redis for one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, retention_s: int = DEFAULT_RETENTION_S) -> None:
        # redis-py 5 annotates async results as ``Awaitable[T] | T``; typed as Any here.
        self.redis: Any = redis
        self.keys = keys
        self.retention_s = retention_s
        source = importlib.resources.files("dispatcher").joinpath("apply.lua").read_text()
        self._apply = redis.register_script(source)
        self._graphs: dict[tuple[str, int], Graph] = {}

    # --- graphs -------------------------------------------------------------------------

    async def register_graph(self, graph: Graph) -> int:
        """Store a validated graph under (id, version). Registering the same content again
        is a no-op; different content under an existing version is an error. The graphs it
        runs as child runs (named statically) must be registered, and must not include it
        again (``GraphValidationError``, code ``bad_subgraph``)."""
        graph.validate_graph()
        await self._check_subgraphs(graph)
        raw = dumps(graph.to_dict())
        field_ = self.keys.graph_field(graph.id, graph.version)
        created = await self.redis.hsetnx(self.keys.graphs, field_, raw)
        if not created:
            existing = await self.redis.hget(self.keys.graphs, field_)
            if existing is not None and orjson.loads(existing) != orjson.loads(raw):
                raise StoreError(
                    f"graph {graph.id!r} version {graph.version} is already registered with "
                    "different content; register it under a new version"
                )
        latest = await self.redis.hget(self.keys.graph_latest, graph.id)
        if latest is None or int(latest) < graph.version:
            await self.redis.hset(self.keys.graph_latest, graph.id, graph.version)
        for spec in triggers_of(graph):  # emit() finds the graphs an event starts here
            if spec.type == "event" and spec.event:
                await self.redis.sadd(self.keys.event_graphs(spec.event), graph.id)
        return graph.version

    async def _check_subgraphs(self, graph: Graph) -> None:
        """Refuse a graph whose static child graphs are not registered, or lead back to it."""
        problems = []
        for node_id, ref, version in graph.subgraph_refs():
            where = f"nodes[{_position(graph, node_id)}].config.graph"
            try:
                child = await self._graph_ref(ref, version)
            except GraphNotFound:
                what = f"{ref!r} v{version}" if version is not None else repr(ref)
                problems.append(
                    Problem(
                        "bad_subgraph",
                        where,
                        f"node {node_id!r} runs graph {what}, which is not registered: "
                        "register it first",
                    )
                )
                continue
            cycle = await self._path_back(child, graph.id, [graph.id, ref], set())
            if cycle is not None:
                problems.append(
                    Problem(
                        "bad_subgraph",
                        where,
                        f"node {node_id!r}: graphs include each other without end: "
                        f"{' -> '.join(cycle)}",
                    )
                )
        if problems:
            raise GraphValidationError(problems, graph.id)

    async def _graph_ref(self, graph_id: str, version: int | None) -> Graph:
        found = version if version is not None else await self.latest_version(graph_id)
        if found is None:
            raise GraphNotFound(graph_id, None)
        return await self.graph(graph_id, found)

    async def _path_back(
        self, graph: Graph, target: str, path: list[str], seen: set[tuple[str, int | None]]
    ) -> list[str] | None:
        """The chain of static child graphs from ``graph`` back to ``target``, if any.
        ``seen``: the references searched already (a graph reached twice is read once)."""
        if len(path) > 32:  # deeper than any run may nest: not a cycle worth chasing
            return None
        for _, ref, version in graph.subgraph_refs():
            if ref == target:
                return [*path, ref]
            if ref in path or (ref, version) in seen:
                continue  # a cycle that does not pass through target: its own graphs' problem
            seen.add((ref, version))
            try:
                child = await self._graph_ref(ref, version)
            except GraphNotFound:
                continue
            found = await self._path_back(child, target, [*path, ref], seen)
            if found is not None:
                return found
        return None

    async def latest_version(self, graph_id: str) -> int | None:
        raw = await self.redis.hget(self.keys.graph_latest, graph_id)
        return int(raw) if raw is not None else None

    async def latest_versions(self, graph_ids: Sequence[str]) -> dict[str, int | None]:
        """``latest_version`` of several graphs in one round trip."""
        ids = list(dict.fromkeys(graph_ids))
        raws = await self.redis.hmget(self.keys.graph_latest, ids) if ids else []
        return {g: int(raw) if raw is not None else None for g, raw in zip(ids, raws, strict=True)}

    async def graph(self, graph_id: str, version: int) -> Graph:
        cached = self._graphs.get((graph_id, version))
        if cached is not None:
            return cached
        raw = await self.redis.hget(self.keys.graphs, self.keys.graph_field(graph_id, version))
        if raw is None:
            raise GraphNotFound(graph_id, version)
        try:
            graph = Graph.from_json(raw)
        except GraphValidationError as e:
            raise StoreError(f"stored graph {graph_id!r}@{version} is invalid: {e}") from e
        self._graphs[(graph_id, version)] = graph
        return graph

    # --- loading ------------------------------------------------------------------------

    async def load(self, run_id: str, prefetch: Prefetch = NOTHING) -> RedisView:
        return (await self.load_many([(run_id, prefetch)]))[0]

    async def load_many(self, wanted: Sequence[tuple[str, Prefetch]]) -> list[RedisView]:
        """Each run's record and revision, and the records its ``Prefetch`` names, for
        several runs in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id, prefetch in wanted:
            rk = self.keys.run(run_id)
            pipe.hmget(rk.meta, "run", "rev", "stamp")
            if prefetch.nodes:
                pipe.hmget(rk.nodes, prefetch.nodes)
            if prefetch.joins:
                pipe.hmget(rk.joins, [RunKeys.join_field(n, i) for n, i in prefetch.joins])
            if prefetch.loops:
                pipe.hmget(rk.loops, [str(i) for i in prefetch.loops])
        replies = iter(await pipe.execute())
        views = []
        for _, prefetch in wanted:
            run_raw, rev_raw, stamp = next(replies)
            view = RedisView(
                run_raw=run_raw,
                rev=int(rev_raw) if rev_raw is not None else None,
                stamp=stamp.decode() if stamp is not None else None,
            )
            if prefetch.nodes:
                view.nodes.update(zip(prefetch.nodes, next(replies), strict=True))
            if prefetch.joins:
                _set_joins(view, prefetch.joins, next(replies))
            if prefetch.loops:
                view.loops.update(zip(prefetch.loops, next(replies), strict=True))
            views.append(view)
        return views

    async def fill_nodes(self, run_id: str, view: RedisView, node_ids: list[str]) -> None:
        """Load several node records in one round trip."""
        wanted = [n for n in node_ids if n not in view.nodes]
        if not wanted:
            return
        raws = await self.redis.hmget(self.keys.run(run_id).nodes, wanted)
        view.nodes.update(zip(wanted, raws, strict=True))

    async def fill(self, run_id: str, view: RedisView, need: NeedState) -> None:
        """Load what ``need`` names into ``view``."""
        await self.fill_many([(run_id, view, need)])

    async def fill_many(self, needs: Sequence[tuple[str, RedisView, NeedState]]) -> None:
        """Load what each ``need`` names into its view (of its run), all in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id, _, need in needs:
            _queue_read(pipe, self.keys.run(run_id), need)
        replies = await pipe.execute()
        for (_, view, need), raw in zip(needs, replies, strict=True):
            _take_read(view, need, raw)

    async def child_failed(
        self, child_run_id: str, parent: ParentRef, error_type: str, message: str
    ) -> None:
        """Tell a parent run that its child run could not start (its graph is missing)."""
        error = ErrorInfo(type=error_type, message=message, retryable=False)
        ended = child_end(parent, child_run_id, "failed", error=error)
        await self.redis.xadd(self.keys.shard_for(parent.run_id).inbox, {"m": encode_inbox(ended)})

    # --- applying -----------------------------------------------------------------------

    async def apply(
        self,
        t: Transition,
        expected_rev: int | None,
        old_status: str | None,
        now_ms: int,
        ack: str | None = None,
        *,
        stamp: str | None,
    ) -> bool:
        """Apply ``t`` atomically if the run is still at ``expected_rev`` (None: the run must
        not exist yet) with the ``stamp`` it was read with (None: it had none).
        ``old_status`` is the status the run had. ``ack``: an inbox entry id acknowledged in
        the same script. False on conflict."""
        call = self.apply_call(t, expected_rev, old_status, now_ms, ack, stamp=stamp)
        return await self.apply_prepared(call)

    async def apply_prepared(self, call: ApplyCall) -> bool:
        """``apply`` of a call ``prepare`` (or ``apply_call``) made."""
        keys, args = call
        return bool(await self._apply(keys=keys, args=args))

    async def apply_many(self, calls: Sequence[ApplyCall]) -> list[bool | Exception]:
        """Several ``apply``s (from ``apply_call``) in one round trip, in order. Each result
        is True (applied), False (the run moved on: conflict) or the error its script got.
        A lost connection raises."""
        results: list[bool | Exception] = [False] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):  # again only for NOSCRIPT: the server restarted or flushed
            pipe = script_pipeline(self.redis)
            for i in todo:
                keys, args = calls[i]
                pipe.evalsha(self._apply.sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)  # not run: safe to send again
                elif isinstance(reply, Exception):
                    results[i] = reply
                else:
                    results[i] = bool(reply)
            if not missing:
                break
            self._apply.sha = await self.redis.script_load(self._apply.script)
            todo = missing
        return results

    def apply_call(
        self,
        t: Transition,
        expected_rev: int | None,
        old_status: str | None,
        now_ms: int,
        ack: str | None,
        *,
        stamp: str | None,
    ) -> ApplyCall:
        """The keys and arguments of apply.lua for ``t`` (see ``apply``)."""
        return self.prepare(t, expected_rev, old_status, now_ms, ack, stamp=stamp)[0]

    def prepare(
        self,
        t: Transition,
        expected_rev: int | None,
        old_status: str | None,
        now_ms: int,
        ack: str | None,
        *,
        stamp: str | None,
    ) -> tuple[ApplyCall, StateWrites]:
        """``apply_call``, and the records the call writes, as the text it stores (with the
        new stamp the call sets)."""
        run = t.run
        if run is None:
            raise StoreError("a transition without a run record cannot be applied")
        rk = self.keys.run(run.run_id)
        shard = self.keys.shard_for(run.run_id)  # the run's keys and these share its slot
        keys = [
            *rk.all(),
            shard.timers,
            shard.runs_all,
            shard.runs_by_status(old_status or run.status.value),
            shard.runs_by_status(run.status.value),
            shard.runs_by_graph(run.graph_id),
        ]
        rev = str(expected_rev) if expected_rev is not None else "-1"
        writes = state_writes(t, run)
        changes = pack_changes(self.keys, t, run, now_ms, ack, self.retention_s, keys, writes)
        return (keys, [rev, changes, stamp or ""]), writes

    # --- read models --------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord | None:
        raw = await self.redis.hget(self.keys.run(run_id).meta, "run")
        if raw is None:
            return None
        try:
            return RunRecord.model_validate_json(raw)
        except ValidationError as e:
            raise StoreError(f"run {run_id!r} has a corrupt record: {e}") from e

    async def node_records(self, run_id: str) -> dict[str, NodeRecord]:
        raw = await self.redis.hgetall(self.keys.run(run_id).nodes)
        return {k.decode(): NodeRecord.model_validate_json(v) for k, v in raw.items()}

    async def outputs_of(self, run_id: str, wanted: dict[str, int]) -> dict[str, Any]:
        if not wanted:
            return {}
        fields = [RunKeys.output_field(n, v) for n, v in wanted.items()]
        raws = await self.redis.hmget(self.keys.run(run_id).outputs, fields)
        return {n: orjson.loads(r) for n, r in zip(wanted, raws, strict=True) if r is not None}

    async def outputs_at(
        self, run_id: str, visits: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], Any]:
        """The stored outputs of these (node, visit) pairs; pairs with none are left out."""
        if not visits:
            return {}
        fields = [RunKeys.output_field(n, v) for n, v in visits]
        raws = await self.redis.hmget(self.keys.run(run_id).outputs, fields)
        return {p: orjson.loads(r) for p, r in zip(visits, raws, strict=True) if r is not None}

    async def history(self, run_id: str, count: int | None = None) -> list[dict[str, Any]]:
        """The run's history events, oldest first (``count``: the first ones only). An
        entry relaygraph did not write (added by hand) is skipped and logged: it must not
        hide the events around it."""
        entries = await self.redis.xrange(self.keys.run(run_id).events, count=count)
        events = []
        for entry_id, fields in entries:
            try:
                events.append(history_event(run_id, fields))
            except orjson.JSONDecodeError as e:
                entry = entry_id.decode()
                log.warning("run %s: skipping history entry %s, not an event: %s", run_id, entry, e)
        return events

    async def list_runs(
        self, status: str | None = None, limit: int = 100, graph_id: str | None = None
    ) -> list[str]:
        """Run ids, newest first: by creation, or by the time they entered ``status``."""
        return [run_id for run_id, _ in await self.page_runs(status, graph_id, limit)]

    async def page_runs(
        self,
        status: str | None,
        graph_id: str | None,
        limit: int,
        before: tuple[int, str] | None = None,
    ) -> list[tuple[str, int]]:
        """A page of ``list_runs`` with each run's index score (ms): the runs after
        ``before`` (the last (score, run id) of the previous page) in the index's newest-first
        order. Runs created meanwhile sort before ``before``, so pages stay stable. In the
        sharded layout each shard's page is read and the pages merged: the cursor orders
        runs across shards the same way."""
        shards = self._shards()
        if len(shards) == 1:
            return await self._page_in(shards[0], status, graph_id, limit, before)
        pages = await asyncio.gather(
            *(self._page_in(s, status, graph_id, limit, before) for s in shards)
        )  # the shards at once, not one round trip after another
        return sorted((p for page in pages for p in page), key=_newest, reverse=True)[:limit]

    def _shards(self) -> list[ShardKeys]:
        return [self.keys.shard(k) for k in range(max(1, self.keys.shards))]

    async def _page_in(
        self,
        shard: ShardKeys,
        status: str | None,
        graph_id: str | None,
        limit: int,
        before: tuple[int, str] | None,
    ) -> list[tuple[str, int]]:
        if status and graph_id:
            return await self._page_of_both(shard, status, graph_id, limit, before)
        if graph_id:
            key = shard.runs_by_graph(graph_id)
        else:
            key = shard.runs_by_status(status) if status else shard.runs_all
        return await self._after(key, before, limit)

    async def _after(
        self, key: str, before: tuple[int, str] | None, count: int
    ) -> list[tuple[str, int]]:
        """Up to ``count`` members of index ``key`` after ``before``, newest first."""
        if before is None:
            pairs = await self.redis.zrevrange(key, 0, count - 1, withscores=True)
            return sorted(((m.decode(), int(sc)) for m, sc in pairs), key=_newest, reverse=True)
        # Members with the cursor's score come in reverse lexical order: fetch them all with
        # the page, then drop the ones at or before the cursor.
        ties = await self.redis.zcount(key, before[0], before[0])
        pairs = await self.redis.zrevrangebyscore(
            key, before[0], "-inf", start=0, num=count + ties, withscores=True
        )
        page = sorted(((m.decode(), int(sc)) for m, sc in pairs), key=_newest, reverse=True)
        return [(m, sc) for m, sc in page if (sc, m) < (before[0], before[1])][:count]

    async def _page_of_both(
        self,
        shard: ShardKeys,
        status: str,
        graph_id: str,
        limit: int,
        before: tuple[int, str] | None,
    ) -> list[tuple[str, int]]:
        """The runs of one graph in one status, in the status index's order. The smaller
        index is read in batches and each batch looked up in the other (single-key commands,
        as a cluster needs): a walk of the status index stops once the page is full; a
        smaller graph index is read whole (its runs in the status are at most its size)."""
        by_status, by_graph = shard.runs_by_status(status), shard.runs_by_graph(graph_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(by_status)
        pipe.zcard(by_graph)
        in_status, in_graph = await pipe.execute()
        page: list[tuple[str, int]] = []
        if in_graph < in_status:
            cursor = None  # by (score, id), not by rank: a run pruned meanwhile shifts no other
            while batch := await self._after(by_graph, cursor, _LIST_BATCH):
                scores = await self.redis.zmscore(by_status, [m for m, _ in batch])
                page += [
                    (m, int(sc)) for (m, _), sc in zip(batch, scores, strict=True) if sc is not None
                ]
                cursor = (batch[-1][1], batch[-1][0])
            page.sort(key=_newest, reverse=True)
            if before is not None:
                page = [(m, sc) for m, sc in page if (sc, m) < (before[0], before[1])]
            return page[:limit]
        cursor = before
        while len(page) < limit:  # the status index from the cursor, newest first
            batch = await self._after(by_status, cursor, _LIST_BATCH)
            if not batch:
                break
            ours = await self.redis.zmscore(by_graph, [m for m, _ in batch])
            page += [pair for pair, g in zip(batch, ours, strict=True) if g is not None]
            cursor = (batch[-1][1], batch[-1][0])
        return page[:limit]

    async def oldest_in_status(self, status: str, limit: int) -> list[str]:
        """Run ids in ``status``, the longest there first (an approvals inbox: oldest first),
        over every shard."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in self._shards():
            pipe.zrange(shard.runs_by_status(status), 0, limit - 1, withscores=True)
        found = [(score, m.decode()) for pairs in await pipe.execute() for m, score in pairs]
        return [run_id for _, run_id in sorted(found)[:limit]]

    async def count_by_status(self, statuses: Sequence[str]) -> dict[str, int]:
        """How many runs are in each of ``statuses``, over every shard."""
        pipe = self.redis.pipeline(transaction=False)
        shards = self._shards()
        for status in statuses:
            for shard in shards:
                pipe.zcard(shard.runs_by_status(status))
        counts = iter(await pipe.execute())
        return {status: sum(int(next(counts)) for _ in shards) for status in statuses}

    async def graph_ids(self) -> dict[str, int]:
        """Every registered graph's id and latest version."""
        raw = await self.redis.hgetall(self.keys.graph_latest)
        return {k.decode(): int(v) for k, v in sorted(raw.items())}

    async def graph_versions(self, graph_id: str) -> list[int]:
        """The registered versions of ``graph_id`` (the newest ``MAX_VERSIONS_LISTED`` of
        them), oldest first."""
        latest = await self.latest_version(graph_id)
        if latest is None:
            return []
        versions = range(max(1, latest - MAX_VERSIONS_LISTED + 1), latest + 1)
        fields = [self.keys.graph_field(graph_id, v) for v in versions]
        found = await self.redis.hmget(self.keys.graphs, fields)
        return [v for v, raw in zip(versions, found, strict=True) if raw is not None]


def _newest(pair: tuple[str, int]) -> tuple[int, str]:
    return pair[1], pair[0]


def _set_joins(view: RedisView, keys: Sequence[tuple[str, int]], raws: list[bytes | None]) -> None:
    for key, raw in zip(keys, raws, strict=True):
        view.joins[key] = raw.decode() if raw is not None else ""


def _queue_read(pipe: Any, rk: RunKeys, need: NeedState) -> None:
    """Queue on ``pipe`` the read of what ``need`` names."""
    if need.kind == "node":
        pipe.hget(rk.nodes, need.key)
    elif need.kind == "output":
        pipe.hget(rk.outputs, RunKeys.output_field(*need.key))
    elif need.kind == "join":
        pipe.hget(rk.joins, RunKeys.join_field(*need.key))
    elif need.kind == "joins":  # several join fields at once: a list of keys
        pipe.hmget(rk.joins, [RunKeys.join_field(n, i) for n, i in need.key])
    elif need.kind == "loop":
        pipe.hget(rk.loops, str(need.key))
    elif need.kind == "active":
        pipe.hgetall(rk.active)
    elif need.kind == "item":  # one item of a map's list: (node, visit, item)
        node_id, visit, item = need.key
        pipe.hget(rk.outputs, RunKeys.item_field(node_id, visit, item, "in"))
    elif need.kind == "items":  # a map's results, all at once: (node, visit, total)
        node_id, visit, total = need.key
        pipe.hmget(rk.outputs, [RunKeys.item_field(node_id, visit, i, "out") for i in range(total)])
    else:  # pragma: no cover - programming error
        raise StoreError(f"unknown state kind {need.kind!r}")


def _take_read(view: RedisView, need: NeedState, raw: Any) -> None:
    """Put the reply of ``_queue_read(need)`` into ``view``."""
    if need.kind == "node":
        view.nodes[need.key] = raw
    elif need.kind == "output":
        view.outputs[need.key] = orjson.loads(raw) if raw is not None else MISSING
    elif need.kind == "join":
        view.joins[need.key] = raw.decode() if raw is not None else ""
    elif need.kind == "joins":
        _set_joins(view, need.key, raw)
    elif need.kind == "loop":
        view.loops[need.key] = raw
    elif need.kind == "item":
        view.item_inputs[need.key] = orjson.loads(raw) if raw is not None else MISSING
    elif need.kind == "items":
        view.items[need.key] = [orjson.loads(r) if r is not None else MISSING for r in raw]
    else:
        view.active = {k.decode(): int(v) for k, v in raw.items()}


def _position(graph: Graph, node_id: str) -> int:
    return next(i for i, n in enumerate(graph.nodes) if n.id == node_id)
