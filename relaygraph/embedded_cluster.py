"""A throwaway Redis Cluster / Valkey Cluster on loopback, for tests and the bench.

`EmbeddedCluster` starts ``primaries`` cluster-enabled servers (`EmbeddedServer`s, so the
same binary discovery), each with ``replicas`` replicas, and joins them the way an operator
would without ``valkey-cli --cluster create``: every primary is given an even share of the
16,384 hash slots (``CLUSTER ADDSLOTSRANGE``), the nodes are introduced to each other
(``CLUSTER MEET``), and each replica follows its primary (``CLUSTER REPLICATE``). `start`
returns once every node reports ``cluster_state:ok``, agrees on who serves every slot and
every replica's link to its primary is up.

`kill` SIGKILLs one node, as a crash would; `wait_ok` then waits for the cluster to heal (a
replica promoted in the dead primary's place). Like `EmbeddedServer`, this is not a
production deployment: persistence is off and the nodes die with their parent.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis
import redis.cluster

from relaygraph.embedded import EmbeddedServer, EmbeddedServerError, _free_port

__all__ = ["SLOTS", "ClusterNode", "EmbeddedCluster"]

SLOTS = 16384  # hash slots of a Redis Cluster


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node as the cluster sees it (``CLUSTER NODES``)."""

    node_id: str
    port: int
    role: str  # "primary" or "replica"
    primary_id: str | None  # a replica's primary
    slots: tuple[tuple[int, int], ...]  # a primary's slot ranges, inclusive
    failed: bool  # flagged fail (or pfail) by the node that was asked


class EmbeddedCluster:
    """``primaries`` primaries with ``replicas`` replicas each, joined into one cluster.

    ``node_timeout_ms`` is the cluster's ``cluster-node-timeout``: how long a silent node
    takes to be declared failed, so how soon a replica replaces a killed primary (a few
    times this). Use it as a context manager, or call `start` and `stop`.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        *,
        binary: str | os.PathLike[str] | None = None,
        node_timeout_ms: int = 1000,
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise EmbeddedServerError(
                f"a cluster needs >= 1 primary and >= 0 replicas each, got {primaries} and "
                f"{replicas}"
            )
        if primaries > SLOTS:
            raise EmbeddedServerError(f"{primaries} primaries: more than {SLOTS} slots")
        if node_timeout_ms < 100:
            raise EmbeddedServerError(f"node_timeout_ms {node_timeout_ms}: use >= 100 ms")
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self._binary = binary
        self._extra_args = tuple(extra_args)
        self.servers: list[EmbeddedServer] = []
        self._bus_ports: list[int] = []
        for _ in range(primaries * (1 + replicas)):
            server, bus_port = self._node()
            self.servers.append(server)
            self._bus_ports.append(bus_port)

    def _node(self) -> tuple[EmbeddedServer, int]:
        """A node's server (not started) and its cluster bus port."""
        bus_port = _free_port(self.host)  # not port + 10000: that may be past 65535
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-port", str(bus_port),
            # a replica may take over however long it was cut off from its primary
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once
            *self._extra_args,
        ]  # fmt: skip
        return EmbeddedServer(self._binary, extra_args=args), bus_port

    # -- what callers read -------------------------------------------------------------

    @property
    def url(self) -> str:
        """A URL of one primary (a cluster client finds the others from it)."""
        return self.servers[0].url

    @property
    def ports(self) -> list[int]:
        """Every node's port: the primaries first, then the replicas, as started."""
        return [s.port for s in self.servers]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every node that runs, for a cluster client to start from."""
        return [(self.host, s.port) for s in self.servers if s.running]

    def client(self, **kwargs: Any) -> Any:
        """A synchronous cluster client (redis-py's ``RedisCluster``) on this cluster."""
        make_node: Any = redis.cluster.ClusterNode
        cluster: Any = redis.RedisCluster
        return cluster(startup_nodes=[make_node(h, p) for h, p in self.startup_nodes], **kwargs)

    def nodes(self) -> list[ClusterNode]:
        """The cluster as a running node sees it (``CLUSTER NODES``)."""
        for server in self.servers:
            if server.running:
                admin = self._admin(server)
                try:
                    return _parse_nodes(admin.execute_command("CLUSTER", "NODES"))
                except redis.RedisError:
                    continue
                finally:
                    admin.close()
        raise EmbeddedServerError("no node of the cluster answers CLUSTER NODES")

    def primary_for(self, slot: int) -> int:
        """The index in `servers` of the node serving ``slot`` now."""
        by_port = {s.port: i for i, s in enumerate(self.servers)}
        for node in self.nodes():
            serves = any(lo <= slot <= hi for lo, hi in node.slots)
            if node.role == "primary" and not node.failed and serves:
                return by_port[node.port]
        raise EmbeddedServerError(f"no live primary serves slot {slot}")

    def replication_offset(self, index: int) -> int:
        """How far node ``index`` is in its shard's replication stream: a primary's offset
        of what it wrote, a replica's of what it received."""
        admin = self._admin(self.servers[index])
        try:
            info = admin.info("replication")
        finally:
            admin.close()
        return int(info["slave_repl_offset" if info["role"] == "slave" else "master_repl_offset"])

    def replicas_of(self, index: int) -> list[int]:
        """The indexes in `servers` of node ``index``'s replicas (as the cluster sees them)."""
        by_port = {s.port: i for i, s in enumerate(self.servers)}
        nodes = self.nodes()
        [primary] = [n.node_id for n in nodes if n.port == self.servers[index].port]
        return [by_port[n.port] for n in nodes if n.primary_id == primary and not n.failed]

    def __repr__(self) -> str:
        running = sum(s.running for s in self.servers)
        return (
            f"<EmbeddedCluster {self.primaries} primaries x {self.replicas} replicas, "
            f"{running}/{len(self.servers)} running>"
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node, join them into one cluster and wait until it is healthy."""
        try:
            for i in range(len(self.servers)):
                self._start_node(i)
            self._join()
            self.wait_ok(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, i: int) -> None:
        """Start node ``i``; its bus port may be taken meanwhile: then with a new one."""
        for attempt in range(3):
            try:
                self.servers[i].start()
                return
            except EmbeddedServerError:
                if attempt == 2:
                    raise
                self.servers[i].stop()
                self.servers[i], self._bus_ports[i] = self._node()

    def stop(self) -> None:
        """Stop every node and remove their directories. Idempotent."""
        with contextlib.ExitStack() as stack:  # stops every node even if one stop fails
            for server in self.servers:
                stack.callback(server.stop)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` of `servers` (its data dir is kept for `restart`)."""
        self.servers[index].kill()

    def restart(self, index: int) -> None:
        """Start a killed node again: it rejoins with its old identity (its nodes.conf)."""
        self.servers[index].restart()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and agrees on the owner
        of every slot, with every replica linked to its primary."""
        _until(self._health, "the cluster to become healthy", timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _admin(self, server: EmbeddedServer) -> Any:  # a sync redis.Redis (untyped calls)
        return redis.Redis(host=self.host, port=server.port, socket_timeout=2.0)

    def _join(self) -> None:
        admins = [self._admin(s) for s in self.servers]
        try:
            ids = [a.execute_command("CLUSTER", "MYID").decode() for a in admins]
            n = self.primaries
            for i in range(n):
                lo, hi = i * SLOTS // n, (i + 1) * SLOTS // n - 1
                admins[i].execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            for server, bus_port in zip(self.servers[1:], self._bus_ports[1:], strict=True):
                admins[0].execute_command("CLUSTER", "MEET", self.host, server.port, bus_port)
            _until(lambda: self._everyone_known(admins), "the nodes to meet", self.startup_timeout)
            for r, admin in enumerate(admins[n:]):
                primary = ids[r % n]
                admin.execute_command("CLUSTER", "REPLICATE", primary)
        finally:
            for admin in admins:
                admin.close()

    def _everyone_known(self, admins: list[Any]) -> str:
        for i, admin in enumerate(admins):
            known = _parse_nodes(admin.execute_command("CLUSTER", "NODES"))
            if len(known) < len(admins):
                return f"node {i} knows {len(known)} of {len(admins)} nodes"
        return ""

    def _health(self) -> str:
        """'' when healthy, else what is not yet."""
        views: list[tuple[int, list[ClusterNode]]] = []
        for server in self.servers:
            if not server.running:
                continue
            admin = self._admin(server)
            try:
                info = admin.execute_command("CLUSTER", "INFO")
                if b"cluster_state:ok" not in info:
                    return f"node on port {server.port} is not ok yet"
                views.append((server.port, _parse_nodes(admin.execute_command("CLUSTER", "NODES"))))
                replication = admin.info("replication")
                if (
                    replication.get("role") == "slave"
                    and replication.get("master_link_status") != "up"
                ):
                    return f"replica on port {server.port} is not linked to its primary yet"
            except redis.RedisError as e:
                return f"node on port {server.port}: {e}"
            finally:
                admin.close()
        if not views:
            return "no node runs"
        running = {s.port for s in self.servers if s.running}
        owners = [_slot_owners(nodes) for _, nodes in views]
        for (port, _), seen in zip(views, owners, strict=True):
            covered = -1  # the last slot served without a gap from slot 0
            for lo, hi, owner in seen:
                if lo != covered + 1:
                    return f"node on port {port} sees slot {covered + 1} unserved or served twice"
                if owner not in running:  # killed, and not yet noticed: no failover yet
                    return f"node on port {port} has slots {lo}-{hi} on stopped port {owner}"
                covered = hi
            if covered != SLOTS - 1:
                return f"node on port {port} sees slot {covered + 1} unserved"
            if seen != owners[0]:
                return f"node on port {port} disagrees with port {views[0][0]} on slot owners"
        replicas_seen = sum(
            1 for n in views[0][1] if n.role == "replica" and n.port in running and not n.failed
        )
        replicas_running = len(running) - len({port for _, _, port in owners[0]})
        if replicas_seen < replicas_running:
            return f"{replicas_seen} of {replicas_running} running replicas attached"
        return ""


def _until(check: Callable[[], str], what: str, timeout: float) -> None:
    """Poll ``check`` ('' when done, else what is not yet) until done or ``timeout``."""
    deadline = time.monotonic() + timeout
    problem = check()
    while problem:
        if time.monotonic() > deadline:
            raise EmbeddedServerError(f"timed out after {timeout}s waiting for {what}: {problem}")
        time.sleep(0.02)
        problem = check()


def _parse_nodes(text: bytes | str) -> list[ClusterNode]:
    """``CLUSTER NODES``: one line per node, ``id ip:port@bus flags primary ... slots``."""
    if isinstance(text, bytes):
        text = text.decode()
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        flags = set(parts[2].split(","))
        if "handshake" in flags or "noaddr" in flags:
            continue
        port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
        slots = []
        for spec in parts[8:]:
            if spec.startswith("["):  # a slot being migrated or imported
                continue
            lo, _, hi = spec.partition("-")
            slots.append((int(lo), int(hi or lo)))
        nodes.append(
            ClusterNode(
                node_id=parts[0],
                port=port,
                role="primary" if "master" in flags else "replica",
                primary_id=None if parts[3] == "-" else parts[3],
                slots=tuple(slots),
                failed=bool(flags & {"fail", "fail?"}),
            )
        )
    return nodes


def _slot_owners(nodes: list[ClusterNode]) -> list[tuple[int, int, int]]:
    """(first slot, last slot, port) of every range a healthy primary serves, sorted."""
    return sorted(
        (lo, hi, node.port)
        for node in nodes
        if node.role == "primary" and not node.failed
        for lo, hi in node.slots
    )
