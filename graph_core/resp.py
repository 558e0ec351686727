"""Packing Redis commands (RESP) fast, for the runtime's clients.

redis-py's asyncio ``pack_command`` builds a command by joining a growing buffer once per
argument: ~30 µs for a claim script's 24 arguments, a fifth of a worker's CPU per node.
``pack_command`` here gives the same bytes with hiredis's C packer (~3 µs), or a
single join in Python without hiredis (~10 µs), and leaves to redis-py whatever it does not
handle the same way (arguments that are not str, bytes, int or float, encodings other than
UTF-8). ``fast_packing`` gives a client's connections this packer: the dispatcher, the client,
the API and the workers call it on the clients they open.

Pure: no I/O, and nothing from Redis client libraries is imported (a client is duck-typed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from graph_core.errors import RelaygraphError
from graph_core.keys import Keys
from graph_core.redis_url import CLUSTER_NEEDS_SHARDS

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency; a bare install still works
    _hiredis_pack = None

__all__ = [
    "OneByOne",
    "fast_packing",
    "pack_command",
    "record_layout",
    "restore_seeds",
    "script_pipeline",
]

_Client = TypeVar("_Client")
_PACKERS: dict[type, type] = {}  # a connection class -> its subclass with the fast packer


def _python_pack(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is bytes:
            data = arg
        elif kind is int or kind is float:
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot pack {kind.__name__}")
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


_pack: Callable[[tuple[Any, ...]], bytes] = _python_pack if _hiredis_pack is None else _hiredis_pack


def pack_command(*args: Any) -> bytes:
    """The RESP bytes of one command, as redis-py packs it: a first argument holding
    spaces (``"CLIENT SETINFO"``) is split into words. ``TypeError`` for an argument that
    is not str (UTF-8), bytes, int or float (redis-py then decides: e.g. a bool is an error
    there)."""
    first = args[0]
    if type(first) is str and " " in first:
        args = (*first.encode().split(), *args[1:])
    elif type(first) is bytes and b" " in first:
        args = (*first.split(), *args[1:])
    return _pack(args)


def _fast(cls: type) -> type:
    """``cls`` (a redis-py connection class) with ``pack_command`` above."""
    fast = _PACKERS.get(cls)
    if fast is not None or getattr(cls, "_relaygraph_fast_packing", False):
        return fast or cls
    plain = getattr(cls, "pack_command")  # noqa: B009 - any connection class

    def packed(self: Any, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if encoder.encoding.lower().replace("-", "") == "utf8" and encoder.encoding_errors == (
            "strict"
        ):
            try:
                return [pack_command(*args)]
            except TypeError:
                pass
        result: list[bytes] = plain(self, *args)
        return result

    attrs = {"pack_command": packed, "_relaygraph_fast_packing": True, "__slots__": ()}
    fast = type(cls.__name__, (cls,), attrs)
    fast.__module__ = __name__
    _PACKERS[cls] = fast
    return fast


def fast_packing(client: _Client) -> _Client:
    """Give the connections of ``client`` (a redis-py client, asyncio or not, or anything
    with a ``connection_pool``) the fast packer, and return it. Connections the pool holds
    already switch too (the packer keeps no state), so a client that has connected (arq's
    pool pings as it opens) is covered."""
    pool = getattr(client, "connection_pool", None)
    cls = getattr(pool, "connection_class", None)
    if pool is None or not isinstance(cls, type) or not hasattr(cls, "pack_command"):
        return client
    pool.connection_class = _fast(cls)
    for held in ("_available_connections", "_in_use_connections"):
        for conn in list(getattr(pool, held, ()) or ()):
            if type(conn) is cls:
                conn.__class__ = pool.connection_class
    return client


class OneByOne:
    """A stand-in for a pipeline on a Redis Cluster client, whose pipelines refuse
    ``EVALSHA``, ``EVAL`` and ``PUBLISH``: the commands queued are sent one at a time when
    ``execute`` is awaited, in order, with the replies (or, ``raise_on_error=False``, the
    errors) a pipeline gives."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name, None)
        if method is None:  # a command the cluster client has no method for (PUBLISH)
            command = name.upper()

            async def method(*args: Any) -> Any:
                return await self._client.execute_command(command, *args)

        def queue(*args: Any, **kwargs: Any) -> OneByOne:
            self._calls.append((method, args, kwargs))
            return self

        return queue

    def __len__(self) -> int:
        return len(self._calls)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Every command, in order; then, as a pipeline, the first error raised (if
        ``raise_on_error``) or each error in its reply's place."""
        calls, self._calls = self._calls, []
        replies: list[Any] = []
        for method, args, kwargs in calls:
            try:
                replies.append(await method(*args, **kwargs))
            except Exception as e:
                replies.append(e)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies


def restore_seeds(client: Any, make_node: Any) -> None:
    """Put back a cluster client's startup nodes (those it was made with, kept as
    ``relaygraph_seeds``): redis-py 5's asyncio cluster client drops a node that refused a
    connection from them, and after a failover it may have dropped them all, never to
    connect again. ``make_node(host, port, **connection_kwargs)`` builds one. Anything
    else is left alone."""
    manager = getattr(client, "nodes_manager", None)
    seeds = getattr(client, "relaygraph_seeds", None)
    if manager is None or not seeds:
        return
    for host, port in seeds:
        node = make_node(host, port, **manager.connection_kwargs)
        manager.startup_nodes.setdefault(node.name, node)


def script_pipeline(client: Any) -> Any:
    """``client.pipeline(transaction=False)`` for a pipeline that runs scripts or publishes;
    on a Redis Cluster client (asyncio), a ``OneByOne``."""
    if _is_cluster(client) and type(client).__module__.startswith("redis.asyncio"):
        return OneByOne(client)
    return client.pipeline(transaction=False)


async def record_layout(redis: Any, keys: Keys, refused: Callable[[BaseException], bool]) -> None:
    """Record the key layout if none is (the first process of a deployment), else refuse
    one that differs: processes with different layouts would not see each other's keys. On
    a Redis Cluster the layout must be sharded. ``refused(e)``: whether an error is a reply
    saying Redis cannot write now (out of memory, say), so that a later process records it
    (the caller's rule: ``dispatcher.connect.check_layout``, ``worker.waking.check_layout``)."""
    if _is_cluster(redis) and not keys.sharded:
        raise RelaygraphError(CLUSTER_NEEDS_SHARDS)
    try:
        await redis.set(keys.layout, str(keys.shards), nx=True)
    except Exception as e:
        if not refused(e):
            raise
    problem = keys.layout_problem(await redis.get(keys.layout))
    if problem is not None:
        raise RelaygraphError(problem)


def _is_cluster(client: Any) -> bool:
    """Whether ``client`` is redis-py's ``RedisCluster`` (asyncio or not), by name: this
    module imports no Redis client."""
    return type(client).__name__ == "RedisCluster"
