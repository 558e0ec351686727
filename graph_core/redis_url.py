"""Parsing Redis URLs (pure), shared by the dispatcher's and the worker's connections.

``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS; query options
``ssl_cert_reqs=none|optional|required``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_check_hostname=true|false``), ``unix:///path?db=N``,
``redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/db]`` and, for a Redis
Cluster (with ``RELAYGRAPH_SHARDS``), ``redis+cluster://[user:password@]host:port[,host:port
...]`` (``rediss+cluster://`` with TLS): the nodes a client starts from. Credentials may be
percent-encoded. Unknown query options are errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlparse

from graph_core.errors import RelaygraphError

__all__ = [
    "CLUSTER_NEEDS_SHARDS",
    "ClusterUnsupported",
    "RedisTarget",
    "RedisUrlError",
    "check_not_cluster",
    "is_cluster_reply",
    "is_cluster_request_error",
    "is_redis_client_fault",
    "is_unavailable_reply",
    "parse_redis_url",
    "redact",
]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")
_SSL_CERT_REQS = frozenset({"none", "optional", "required"})


class RedisUrlError(RelaygraphError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = redact(url)
        self.reason = reason
        super().__init__(f"bad Redis URL {self.url!r}: {reason}")


CLUSTER_NEEDS_SHARDS: Final = (
    "on a Redis Cluster, relaygraph's keys need the sharded layout: set RELAYGRAPH_SHARDS "
    "(16 is a good start) for every process of the deployment (docs/cluster-plan.md)"
)


class ClusterUnsupported(RelaygraphError):
    """The server is a Redis Cluster node, reached with a client that is not cluster-aware."""

    def __init__(self, where: str = "") -> None:
        super().__init__(
            f"the Redis server{' at ' + where if where else ''} is a Redis Cluster node "
            "(cluster mode on), reached with a plain redis:// URL: its keys live on several "
            "nodes. Use redis+cluster://host:port with RELAYGRAPH_SHARDS (support for Redis "
            "Cluster is experimental: docs/cluster-plan.md), or a single primary with "
            "replicas and Sentinel (redis+sentinel://)"
        )


# What a cluster node answers a client that is not cluster-aware: a key in another node's
# slot (MOVED, ASK), keys of several slots in one call (CROSSSLOT), slots unserved.
_CLUSTER_REPLY: Final = re.compile(r"\b(MOVED \d+ |ASK \d+ |CROSSSLOT |CLUSTERDOWN )")


def is_cluster_reply(error: BaseException | str) -> bool:
    """Whether an error reply (or its text) is one only a Redis Cluster node gives."""
    return _CLUSTER_REPLY.search(str(error)) is not None


# Replies of a server that cannot serve now (a long script, a failover, a restart, a failed
# background save that stops writes, no replica in sync under min-replicas-to-write), also
# as a script passes them on (Redis 6: "... @user_script: 1: -READONLY You can't write ...").
_UNAVAILABLE_REPLY: Final = re.compile(
    r"(?:^|: -)(?:BUSY|CLUSTERDOWN|LOADING|MASTERDOWN|MISCONF|NOREPLICAS|OOM|READONLY|TRYAGAIN)\b"
)


def is_unavailable_reply(error: BaseException | str) -> bool:
    """Whether an error reply (or its text) says the server cannot serve now, nothing about
    the request: a later try may succeed."""
    return _UNAVAILABLE_REPLY.search(str(error)) is not None


# What a cluster client (redis-py) says, before sending anything, of a request it cannot
# route: keys of several slots in one call, a command without a key, bad arguments. Such a
# request fails the same way every time; its other refusals (no node reachable, slots not
# covered yet) pass with a failover.
_CLUSTER_REFUSED_REQUEST: Final = re.compile(
    r"must map to the same key slot|Missing key|Invalid args in command|"
    r"deprecated in cluster mode|Too many targets|not enabled on this node"
)


def is_cluster_request_error(error: BaseException | str) -> bool:
    """Whether a cluster client's error is about the request itself, not the cluster's
    state: retrying it cannot help."""
    return _CLUSTER_REFUSED_REQUEST.search(str(error)) is not None


# redis-py's clients share connections and (a cluster client) a topology among their
# callers; a caller that meets a dead node tears them down, and another caller caught half
# way then fails inside redis-py with an AttributeError: a pipeline that finds no default
# node ('NoneType' object has no attribute 'name', redis/redis-py#3835), a connection whose
# writer is gone ('... no attribute 'writelines''). Both seen on the cluster failover tests.


def is_redis_client_fault(error: BaseException) -> bool:
    """Whether ``error`` is redis-py failing inside itself while another caller tears down
    what they share after a node died: an ``AttributeError`` raised in redis-py's own
    code. It says nothing about the request; a later try, on a fresh connection, succeeds."""
    if not isinstance(error, AttributeError):
        return False
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:  # the frame that raised it is the last
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__")
    return isinstance(module, str) and module.startswith("redis.")


def check_not_cluster(info: Mapping[str, Any], where: str = "") -> None:
    """Raise ``ClusterUnsupported`` if ``INFO cluster`` (as a client parses it) says the
    server runs in cluster mode."""
    if str(info.get("cluster_enabled", "0")) == "1":
        raise ClusterUnsupported(where)


@dataclass(frozen=True)
class RedisTarget:
    scheme: str
    host: str = "localhost"
    port: int = 6379
    unix_path: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    nodes: tuple[tuple[str, int], ...] = ()  # a cluster's startup nodes
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sentinel(self) -> bool:
        return self.scheme == "redis+sentinel"

    @property
    def is_cluster(self) -> bool:
        return self.scheme.endswith("+cluster")

    @property
    def tls(self) -> bool:
        return self.scheme in ("rediss", "rediss+cluster")


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def parse_redis_url(url: str) -> RedisTarget:
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES:
        raise RedisUrlError(url, f"unsupported scheme {parsed.scheme!r} (use {', '.join(SCHEMES)})")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    user = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password else None
    ssl = _ssl_options(url, query)
    if parsed.scheme == "redis+sentinel":
        return _sentinel(url, parsed.netloc, parsed.path, user, password, query, ssl)
    if parsed.scheme.endswith("+cluster"):
        if parsed.path.strip("/") not in ("", "0") or query.get("db", "0") != "0":
            raise RedisUrlError(url, "a Redis Cluster has database 0 only")
        nodes = _addresses(url, parsed.netloc, 6379, "cluster node")
        return RedisTarget(
            parsed.scheme,
            host=nodes[0][0],
            port=nodes[0][1],
            nodes=nodes,
            username=user,
            password=password,
            ssl=ssl,
        )
    db = _db(url, query.get("db") or parsed.path.strip("/") or "0")
    if parsed.scheme == "unix":
        if not parsed.path:
            raise RedisUrlError(url, "a unix:// URL needs a socket path")
        return RedisTarget(
            "unix",
            unix_path=parsed.path,
            db=_db(url, query.get("db", "0")),
            username=user,
            password=password,
        )
    try:
        port = parsed.port or 6379
    except ValueError as e:
        raise RedisUrlError(url, str(e)) from e
    return RedisTarget(
        parsed.scheme,
        host=parsed.hostname or "localhost",
        port=port,
        db=db,
        username=user,
        password=password,
        ssl=ssl,
    )


def _db(url: str, raw: str) -> int:
    if not raw.isdigit():
        raise RedisUrlError(url, f"bad database number {raw!r}")
    return int(raw)


def _ssl_options(url: str, query: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in query.items():
        if key == "db":
            continue
        if key == "ssl_cert_reqs":
            if value not in _SSL_CERT_REQS:
                raise RedisUrlError(url, "ssl_cert_reqs must be none, optional or required")
            options[key] = value
        elif key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            options[key] = value
        elif key == "ssl_check_hostname":
            options[key] = value.lower() in ("1", "true", "yes")
        else:
            raise RedisUrlError(url, f"unknown option {key!r}")
    return options


def _addresses(url: str, netloc: str, default_port: int, what: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port...`` after any credentials."""
    hosts: list[tuple[str, int]] = []
    for item in filter(None, netloc.rpartition("@")[2].split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", str(default_port))
        if not host or not port.isdigit():
            raise RedisUrlError(url, f"bad {what} address {item!r}")
        hosts.append((host, int(port)))
    if not hosts:
        raise RedisUrlError(url, f"no {what} addresses")
    return tuple(hosts)


def _sentinel(
    url: str,
    netloc: str,
    path: str,
    user: str | None,
    password: str | None,
    query: dict[str, str],
    ssl: dict[str, Any],
) -> RedisTarget:
    hosts = _addresses(url, netloc, 26379, "sentinel")
    parts = [p for p in path.split("/") if p]
    return RedisTarget(
        "redis+sentinel",
        sentinels=hosts,
        master=parts[0] if parts else "mymaster",
        db=_db(url, parts[1] if len(parts) > 1 else query.get("db", "0")),
        username=user,
        password=password,
        ssl=ssl,
    )
