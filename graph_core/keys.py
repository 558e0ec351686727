"""Every Redis key relaygraph uses, built in one place. Keys are built from ids and never
parsed back into ids.

Two layouts:

* **One server** (``Keys(prefix)``, the default): per-run keys carry the run id as a hash
  tag (``<prefix>:run:{<run_id>}:meta``), and the inbox, timers, queues and indexes are one
  key each. These names are the documented ones (docs/protocol.md).
* **Sharded** (``Keys(prefix, shards=S)``), for Redis Cluster (docs/cluster-plan.md): a run
  belongs to shard ``crc32(run_id) mod S`` and its keys carry that shard's tag, as do the
  shard's own inbox, timers, leases, queues, wake lists, abort set and indexes, so that
  every script touches keys of one slot (``key_slot``). A shard's tag (``shard_tag``)
  lands in the shard's share of the slots, so shards spread over the primaries as evenly as
  the slots do. The fleet-wide limits share a tag of their own; graphs, workers, triggers,
  idempotency keys and the dead letter stream are single keys, never in a script with the
  others. In this layout the per-shard keys have no fleet-wide name: ``Keys.inbox`` and its
  kin raise, and ``Keys.shard(k)`` or ``Keys.shard_for(run_id)`` name them.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from typing import Final, NoReturn

from graph_core.errors import RelaygraphError
from graph_core.messages import job_id

__all__ = [
    "CLUSTER_SLOTS",
    "DEFAULT_PREFIX",
    "DEFAULT_SHARDS",
    "MAX_SHARDS",
    "OUTPUT_FIELD_SEP",
    "Keys",
    "PerShard",
    "RunKeys",
    "ShardKeys",
    "check_run_id",
    "is_run_id",
    "key_slot",
    "shard_of",
    "shard_tag",
]

DEFAULT_PREFIX = "relaygraph"
_RUN_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_\-.:]{1,64}$")


_RUNS_CACHED: Final = 1024  # Keys.run's answers kept (all dropped when full: cheap, bounded)
OUTPUT_FIELD_SEP: Final = "#"  # output_field: node id, this, visit (Lua builds it too)
CLUSTER_SLOTS: Final = 16_384  # Redis Cluster's hash slots
DEFAULT_SHARDS: Final = 16
MAX_SHARDS: Final = 256  # a shard's tag is searched for in its share of the slots: keep it wide


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16: Final = _crc16_table()  # CRC16/XMODEM, as Redis Cluster hashes keys


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key``: the CRC16 of its hash tag (what lies between
    its first ``{`` and the next ``}``, if not empty) or else of the whole key, mod 16384."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % CLUSTER_SLOTS


def shard_of(run_id: str, shards: int) -> int:
    """The shard a run belongs to: ``crc32(run_id) mod shards`` (zlib's CRC-32 of the id's
    bytes, the rule a submitter in any language computes). Always 0 on one server."""
    return zlib.crc32(run_id.encode()) % shards if shards > 1 else 0


@functools.lru_cache(maxsize=4 * MAX_SHARDS)
def shard_tag(shard: int, shards: int) -> str:
    """Shard ``shard``'s hash tag among ``shards``: ``s<shard>-<n>`` with the smallest n
    whose slot lies in the shard's share of the slots (``[shard, shard + 1) x 16384 /
    shards``). A cluster whose primaries hold even ranges of slots then holds even numbers
    of shards, and a shard moves with its range."""
    if not 0 <= shard < shards <= MAX_SHARDS:
        raise RelaygraphError(f"no shard {shard} of {shards}")
    low = shard * CLUSTER_SLOTS // shards
    high = (shard + 1) * CLUSTER_SLOTS // shards
    n = 0
    while not low <= key_slot(f"s{shard}-{n}") < high:
        n += 1
    return f"s{shard}-{n}"


class PerShard(RelaygraphError):
    """A fleet-wide name asked for a key that is per shard in the sharded layout: what
    asked for it does not work on a sharded deployment yet (listing runs, fleet stats)."""


def is_run_id(run_id: object) -> bool:
    """Whether ``run_id`` is a run id: 1-128 letters, digits, '_' or '-' (safe in keys)."""
    return isinstance(run_id, str) and _RUN_ID.match(run_id) is not None


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is safe to embed in keys; raise otherwise."""
    if not is_run_id(run_id):
        raise RelaygraphError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '_' or '-'")
    return run_id


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The keys of one run, computed once."""

    # hash: "run" -> RunRecord JSON, "rev" -> revision (int), "stamp" -> random hex, new with
    # every write of the record (an apply expects the rev and stamp it read)
    meta: str
    nodes: str  # hash: node id -> NodeRecord JSON
    outputs: str  # hash: output_field(node, visit) -> output JSON; a map's item_field too
    joins: str  # hash: join_field(node, edge) -> queued branch signals ("t"/"d")
    loops: str  # hash: loop id -> LoopRecord JSON
    active: str  # hash: node id -> visit, the run's live frontier
    events: str  # stream: the run's history
    waits: str  # hash: node id -> wait token (the approval locks of this run)

    @staticmethod
    def output_field(node_id: str, visit: int) -> str:
        return f"{node_id}{OUTPUT_FIELD_SEP}{visit}"

    @staticmethod
    def item_field(node_id: str, visit: int, item: int, kind: str) -> str:
        """A map item's field in the outputs hash: ``node#visit|item|in`` (its input) or
        ``node#visit|item|out`` (its result). Node ids have no ``|``: never an output's."""
        return f"{node_id}{OUTPUT_FIELD_SEP}{visit}|{item}|{kind}"

    @staticmethod
    def join_field(node_id: str, edge_index: int) -> str:
        return f"{node_id}#{edge_index}"

    def all(self) -> tuple[str, ...]:
        return (
            self.meta,
            self.nodes,
            self.outputs,
            self.joins,
            self.loops,
            self.active,
            self.events,
            self.waits,
        )


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one shard: on one server, the fleet's only ones; sharded, all in the
    shard's slot (with its runs' keys)."""

    shard: int
    tag: str  # the shard's hash tag ('' on one server)
    base: str  # "<prefix>" on one server; "<prefix>:{<tag>}" sharded
    inbox: str  # stream consumed by the dispatchers' group
    # zset: timer member -> due time (ms)
    timers: str
    # zset: LeaseExpired message of a running attempt -> lease expiry (ms); renewed by the
    # worker's heartbeat, moved into the inbox by a dispatcher when it lapses
    leases: str
    inbox_attempts: str  # hash: entry id -> handling failures
    runs_all: str  # zset: run id -> created (ms)
    abort: str  # zset: job id -> when its abort was asked (arq's abort set, ``arq:abort``)
    # the live events' channel: one server's ``<prefix>:events`` (PUBLISH); sharded, the
    # shard's, in its slot (SPUBLISH: dispatcher/channels.py)
    events_channel: str

    @classmethod
    def of(cls, prefix: str, shard: int, shards: int) -> ShardKeys:
        tag = shard_tag(shard, shards) if shards else ""
        base = f"{prefix}:{{{tag}}}" if tag else prefix
        return cls(
            shard=shard,
            tag=tag,
            base=base,
            inbox=f"{base}:inbox",
            timers=f"{base}:timers",
            leases=f"{base}:leases",
            inbox_attempts=f"{base}:inbox:attempts",
            runs_all=f"{base}:runs",
            abort="arq:abort" if shards == 0 else f"{base}:abort",
            events_channel=f"{base}:events",
        )

    def runs_by_status(self, status: str) -> str:
        return f"{self.base}:runs:{status}"

    def runs_by_graph(self, graph_id: str) -> str:
        """Zset: the runs of one graph (all versions), run id -> created (ms)."""
        return f"{self.base}:graph-runs:{graph_id}"

    def queue(self, name: str) -> str:
        return f"{self.base}:queue:{name}"

    def wake(self, queue_name: str) -> str:
        return f"{self.base}:wake:{queue_name}"

    def child_cancelled(self, run_id: str) -> str:
        """String: a child run its parent cancelled before the child's submission was
        handled; the submission then starts nothing (kept a retention period)."""
        return f"{self.base}:child-cancelled:{run_id}"

    def approval_seen(self, digest: str) -> str:
        """Marks a published approval as already forwarded to the inbox (or, malformed,
        dead-lettered), so that of all the dispatchers that heard it only one does."""
        return f"{self.base}:approvals:seen:{digest}"

    @property
    def dispatcher(self) -> str:
        """String, sharded layout only: who serves this shard, ``a:<consumer>`` (a
        dispatcher it is assigned to) or ``t:<consumer>`` (one that took it over), with a
        TTL its holder renews (dispatcher/ownership.py). One server has no such key: every
        dispatcher serves its only shard."""
        if not self.tag:
            raise RelaygraphError(
                "a shard's dispatcher lease exists in the sharded layout only: on one "
                "server every dispatcher serves the only shard"
            )
        return f"{self.base}:dispatcher"


class Keys:
    """Key builder for one prefix (default ``relaygraph``) and layout: one server
    (``shards=0``, the default) or ``shards`` shards (1 to ``MAX_SHARDS``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, shards: int = 0) -> None:
        if not _PREFIX.match(prefix):
            raise RelaygraphError(
                f"invalid key prefix {prefix!r}: use 1-64 letters, digits, '_', '-', '.' or ':'"
            )
        if isinstance(shards, bool) or not isinstance(shards, int) or not 0 <= shards <= MAX_SHARDS:
            raise RelaygraphError(
                f"invalid shard count {shards!r}: 0 (one server) or 1-{MAX_SHARDS} (a cluster)"
            )
        self.prefix = prefix
        self.shards = shards
        self._shards: list[ShardKeys | None] = [None] * max(1, shards)
        # on one server, the fleet's only shard: what Keys.inbox and its kin name
        self._single = self.shard(0) if shards == 0 else None
        self._runs: dict[str, RunKeys] = {}  # ``run``'s latest answers (a job asks 3 times)
        p = prefix
        self.inbox_group = "dispatchers"
        self.deadletter = f"{p}:deadletter"  # stream of rejected messages, with reasons
        self.approvals_channel = f"{p}:approvals"
        self.events_channel = f"{p}:events"
        # string: the deployment's shard count (0: one server's layout), set by the first
        # process to start; every later one must have the same (``layout_problem``)
        self.layout = f"{p}:layout"
        self.graphs = f"{p}:graphs"  # hash: graph_field(id, version) -> graph JSON
        self.graph_latest = f"{p}:graphs:latest"  # hash: graph id -> latest version
        # hash: worker process ("host:pid") -> its registration JSON, while it runs
        self.workers = f"{p}:workers"
        # hash: trigger_field(graph, trigger) -> the newest tick fired (epoch seconds)
        self.triggers_last = f"{p}:triggers:last"
        # hash: limit scope (queue:NAME, type:NAME) -> "max_running|rate|burst" (sharded:
        # "<prefix>:{limits}:limits", one slot with its companions); its
        # companions, all touched by worker/limits.py's scripts only: <limits>:running:<scope>
        # (zset: job id -> when its slot lapses, ms), <limits>:bucket:<scope> (hash: tokens,
        # ts), <limits>:throttled (hash: job id -> "<scope>|<wake key>") and
        # <limits>:throttled:<scope> (zset: job id -> when held back, ms)
        self.limits = f"{p}:limits" if shards == 0 else f"{p}:{{limits}}:limits"
        self.limits_throttled = f"{self.limits}:throttled"

    @property
    def sharded(self) -> bool:
        return self.shards > 0

    @property
    def publish_command(self) -> str:
        """What publishes on a shard's ``events_channel``: ``SPUBLISH`` (a shard channel,
        heard on the node that serves its slot), sharded; else ``PUBLISH``."""
        return "SPUBLISH" if self.shards else "PUBLISH"

    def layout_problem(self, stored: bytes | str | None) -> str | None:
        """What is wrong with running this layout where ``self.layout`` holds ``stored``
        (None: nothing, or it agrees)."""
        text = stored.decode() if isinstance(stored, bytes) else stored
        if text is None or text == str(self.shards):
            return None
        return (
            f"{self.layout} says this deployment's keys are laid out in {text} shards "
            f"(0: one server's layout), but this process was started with {self.shards} "
            "(RELAYGRAPH_SHARDS): start every process of a deployment with the same"
        )

    def shard(self, shard: int) -> ShardKeys:
        """Shard ``shard``'s keys (0 on one server: the fleet's)."""
        if not 0 <= shard < len(self._shards):
            raise RelaygraphError(f"no shard {shard}: there are {len(self._shards)}")
        known = self._shards[shard]
        if known is None:
            known = self._shards[shard] = ShardKeys.of(self.prefix, shard, self.shards)
        return known

    def shard_for(self, run_id: str) -> ShardKeys:
        """The keys of the shard run ``run_id`` belongs to."""
        return self.shard(shard_of(run_id, self.shards))

    def _per_shard(self, what: str) -> NoReturn:
        raise PerShard(
            f"{what} is per shard in a sharded layout: name it with keys.shard(k) or "
            "keys.shard_for(run_id)"
        )

    # On one server, the fleet's inbox, timers, leases, queues and indexes.
    @property
    def inbox(self) -> str:
        return (self._single or self._per_shard("the inbox")).inbox

    @property
    def timers(self) -> str:
        return (self._single or self._per_shard("the timers zset")).timers

    @property
    def leases(self) -> str:
        return (self._single or self._per_shard("the leases zset")).leases

    @property
    def inbox_attempts(self) -> str:
        return (self._single or self._per_shard("the inbox attempts hash")).inbox_attempts

    @property
    def runs_all(self) -> str:
        return (self._single or self._per_shard("the runs index")).runs_all

    def approval_seen(self, digest: str) -> str:
        return (self._single or self._per_shard("an approval's marker")).approval_seen(digest)

    @staticmethod
    def trigger_field(graph_id: str, trigger_id: str) -> str:
        """A scheduled trigger's field: trigger ids have no ``#``, so the last one splits."""
        return f"{graph_id}#{trigger_id}"

    def event_graphs(self, event: str) -> str:
        """Set: the graphs whose event trigger names ``event`` (in some version)."""
        return f"{self.prefix}:triggers:event:{event}"

    def child_cancelled(self, run_id: str) -> str:
        return (self._single or self._per_shard("a child's cancelled marker")).child_cancelled(
            run_id
        )

    def hook_seen(self, digest: str) -> str:
        """String: a webhook call's signature already used (replays are refused)."""
        return f"{self.prefix}:hooks:seen:{digest}"

    def limit_running(self, scope: str) -> str:
        """Zset: the jobs of a limited scope that hold a running slot, job id -> when the
        slot lapses unless renewed (ms, the server's clock)."""
        return f"{self.limits}:running:{scope}"

    def limit_held(self, scope: str) -> str:
        """Zset: the jobs a limit of ``scope`` holds back, job id -> when (ms): a finishing
        job of the scope wakes the oldest."""
        return f"{self.limits_throttled}:{scope}"

    def limit_bucket(self, scope: str) -> str:
        """Hash: a rate-limited scope's token bucket (``tokens``, ``ts`` ms)."""
        return f"{self.limits}:bucket:{scope}"

    def graph_field(self, graph_id: str, version: int) -> str:
        return f"{graph_id}@{version}"

    def runs_by_status(self, status: str) -> str:
        return (self._single or self._per_shard("a status index")).runs_by_status(status)

    def runs_by_graph(self, graph_id: str) -> str:
        return (self._single or self._per_shard("a graph's runs index")).runs_by_graph(graph_id)

    def idempotency(self, key: str) -> str:
        """String: the id of the run that holds submission key ``key`` (the key verbatim),
        claimed with SET NX and expiring a retention period after the claim. Sharded, it is
        in the shard ``idempotency_shard`` names, where a client puts the key's run."""
        if self.shards:
            return f"{self.idempotency_shard(key).base}:idem:{key}"
        return f"{self.prefix}:idem:{key}"

    def idempotency_shard(self, key: str) -> ShardKeys:
        """The shard of submission key ``key`` (``crc32(key) mod S``, as a run id's)."""
        return self.shard(shard_of(key, self.shards))

    def queue(self, name: str) -> str:
        return (self._single or self._per_shard("a queue")).queue(name)

    def wake(self, queue_name: str) -> str:
        return (self._single or self._per_shard("a wake list")).wake(queue_name)

    def job_id(
        self, run_id: str, node_id: str, visit: int, attempt: int, item: int | None = None
    ) -> str:
        """An attempt's arq job id (``graph_core.messages.job_id``), which arq's job keys
        are named after: sharded, it carries the run's shard tag."""
        return job_id(run_id, node_id, visit, attempt, item, self.shard_for(run_id).tag)

    def run(self, run_id: str) -> RunKeys:
        """A run's keys: ``<prefix>:run:{<run_id>}:...`` on one server, and sharded
        ``<prefix>:{<shard tag>}:run:<run_id>:...`` (in its shard's slot)."""
        known = self._runs.get(run_id) if isinstance(run_id, str) else None
        if known is not None:
            return known
        check_run_id(run_id)
        if self.shards:
            base = f"{self.shard_for(run_id).base}:run:{run_id}"
        else:
            base = f"{self.prefix}:run:{{{run_id}}}"
        if len(self._runs) >= _RUNS_CACHED:
            self._runs.clear()
        rk = self._runs[run_id] = RunKeys(
            meta=f"{base}:meta",
            nodes=f"{base}:nodes",
            outputs=f"{base}:outputs",
            joins=f"{base}:joins",
            loops=f"{base}:loops",
            active=f"{base}:active",
            events=f"{base}:events",
            waits=f"{base}:waits",
        )
        return rk
