"""Parsing Redis URLs (pure), shared by the dispatcher's and the worker's connections.

``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS; query options
``ssl_cert_reqs=none|optional|required``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_check_hostname=true|false``), ``unix:///path?db=N`` and
``redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/db]``. Credentials may
be percent-encoded. Unknown query options are errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlparse

from graph_core.errors import RelaygraphError

__all__ = [
    "ClusterUnsupported",
    "RedisTarget",
    "RedisUrlError",
    "check_not_cluster",
    "is_cluster_reply",
    "is_unavailable_reply",
    "parse_redis_url",
    "redact",
]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
_SSL_CERT_REQS = frozenset({"none", "optional", "required"})


class RedisUrlError(RelaygraphError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = redact(url)
        self.reason = reason
        super().__init__(f"bad Redis URL {self.url!r}: {reason}")


class ClusterUnsupported(RelaygraphError):
    """The server is a Redis Cluster node, and relaygraph does not run on a cluster yet."""

    def __init__(self, where: str = "") -> None:
        super().__init__(
            f"the Redis server{' at ' + where if where else ''} is a Redis Cluster node "
            "(cluster mode on): relaygraph does not run on Redis Cluster yet (its scripts touch "
            "keys of several hash slots). Use a single primary, with replicas and Sentinel "
            "(redis+sentinel://) for failover; docs/cluster-plan.md tracks cluster support"
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
    r"(?:^|: -)(?:BUSY|LOADING|MASTERDOWN|MISCONF|NOREPLICAS|OOM|READONLY|TRYAGAIN)\b"
)


def is_unavailable_reply(error: BaseException | str) -> bool:
    """Whether an error reply (or its text) says the server cannot serve now, nothing about
    the request: a later try may succeed."""
    return _UNAVAILABLE_REPLY.search(str(error)) is not None


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
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sentinel(self) -> bool:
        return self.scheme == "redis+sentinel"

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"


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


def _sentinel(
    url: str,
    netloc: str,
    path: str,
    user: str | None,
    password: str | None,
    query: dict[str, str],
    ssl: dict[str, Any],
) -> RedisTarget:
    hosts: list[tuple[str, int]] = []
    for item in filter(None, netloc.rpartition("@")[2].split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        if not host or not port.isdigit():
            raise RedisUrlError(url, f"bad sentinel address {item!r}")
        hosts.append((host, int(port)))
    if not hosts:
        raise RedisUrlError(url, "no sentinel addresses")
    parts = [p for p in path.split("/") if p]
    return RedisTarget(
        "redis+sentinel",
        sentinels=tuple(hosts),
        master=parts[0] if parts else "mymaster",
        db=_db(url, parts[1] if len(parts) > 1 else query.get("db", "0")),
        username=user,
        password=password,
        ssl=ssl,
    )
