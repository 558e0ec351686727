"""Which keys each Lua script touches without declaring them, from ``MONITOR``.

On Redis Cluster a script must name every key it touches in ``KEYS`` (the client routes the
call by them) and they must share one hash slot (docs/cluster-plan.md). On one server
neither is enforced, so this records a workload with ``MONITOR`` (a script's commands show
as ``[0 lua]`` lines right after its ``EVALSHA``) and asks the server which arguments of
each inner command are keys (``COMMAND GETKEYS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

__all__ = ["Call", "KeyAudit", "family", "script_names"]

_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_END = b"keyaudit: end of the recording"
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unquote(raw: bytes) -> bytes:
    """One argument of a MONITOR line (the server's ``sdscatrepr`` quoting) as sent."""
    out, i = bytearray(), 0
    while i < len(raw):
        c = raw[i : i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        nxt = raw[i + 1 : i + 2]
        if nxt == b"x":
            out.append(int(raw[i + 2 : i + 4], 16))
            i += 4
        else:
            out += _ESCAPES.get(nxt, nxt)
            i += 2
    return bytes(out)


@dataclass
class Call:
    """One script call: its sha, the keys it declared and the commands it ran."""

    sha: str
    declared: list[bytes]
    inner: list[list[bytes]] = field(default_factory=list)


def script_names() -> dict[str, str]:
    """sha1 -> name, for every script relaygraph runs (arq's own are unnamed)."""
    from dispatcher import client, fleet, schedules, service
    from worker import limits, preload, waking

    apply = importlib.resources.files("dispatcher").joinpath("apply.lua").read_text()
    named = {
        "apply.lua": apply,
        "submit": client._SUBMIT,
        "move timers": service._MOVE_TIMERS,
        "forward approval": service._FORWARD_APPROVAL,
        "trim inbox": service._TRIM_INBOX,
        "queue stats": fleet._QUEUE_STATS,
        "advance schedule": schedules._ADVANCE,
        "claim": waking._CLAIM,
        "finish": waking._FINISH,
        "defer": waking._DEFER,
        "acquire": limits.ACQUIRE,
        "release": limits.RELEASE,
        "renew": limits.RENEW,
        "latest": preload.LATEST_SCRIPT,
    }
    return {hashlib.sha1(src.encode()).hexdigest(): name for name, src in named.items()}


def family(key: bytes) -> str:
    """A key with its ids replaced by ``*``: ``relaygraph:run:{*}:meta``, ``arq:job:*``."""
    text = key.decode(errors="backslashreplace")
    text = re.sub(r"\{[^}]*\}", "{*}", text)
    text = re.sub(r"^(arq:(?:job|in-progress|retry|result)):.*$", r"\1:*", text)
    return re.sub(
        r":(queue|wake|runs|graph-runs|idem|running|bucket|throttled|seen|event):[^:]+.*$",
        r":\1:*",
        text,
    )


class KeyAudit:
    """Record script calls on the server at ``url`` until `stop`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: list[Call] = []
        self.commands: list[list[bytes]] = []  # every command sent (not a script's own)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._ended = asyncio.Event()  # the marker `stop` sends came through

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        """Stop once MONITOR has shown everything sent before: a marker command sent now
        comes through after all of it."""
        if self._task is not None:
            client = aioredis.Redis.from_url(self.url)
            try:
                await client.echo(_END)
            finally:
                await client.aclose()
            await asyncio.wait_for(self._ended.wait(), 10)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        client = aioredis.Redis.from_url(self.url)
        conn: Any = await client.connection_pool.get_connection()
        try:
            await conn.send_command("MONITOR")
            await conn.read_response()  # +OK
            self._ready.set()
            current: Call | None = None
            while True:
                line: bytes = await conn.read_response(disable_decoding=True)
                if isinstance(line, str):
                    line = line.encode()
                source, _, rest = line.partition(b"] ")
                args = [_unquote(a) for a in _ARG.findall(rest)]
                if not args:
                    continue
                if source.endswith(b" lua"):
                    if current is not None:
                        current.inner.append(args)
                    continue
                current = None
                name = args[0].upper()
                self.commands.append(args)
                if name == b"ECHO" and args[1:] == [_END]:
                    self._ended.set()
                if name in (b"EVALSHA", b"EVAL") and len(args) >= 3:
                    sha = args[1].decode()
                    if name == b"EVAL":
                        sha = hashlib.sha1(args[1]).hexdigest()
                    n = int(args[2])
                    current = Call(sha, args[3 : 3 + n])
                    self.calls.append(current)
        finally:
            await conn.disconnect()
            await client.aclose()

    async def _keys_of(
        self, client: Any, commands: set[tuple[bytes, ...]]
    ) -> dict[tuple[bytes, ...], list[bytes]]:
        """Each command's key arguments, as the server tells them (``COMMAND GETKEYS``)."""
        keys_of: dict[tuple[bytes, ...], list[bytes]] = {}
        pipe = client.pipeline(transaction=False)
        order = sorted(commands)
        for command in order:
            pipe.execute_command("COMMAND GETKEYS", *command)
        replies = await pipe.execute(raise_on_error=False)
        for command, reply in zip(order, replies, strict=True):
            if isinstance(reply, Exception):
                text = str(reply)
                if "no key arguments" not in text and "Invalid command" not in text:
                    raise AssertionError(f"COMMAND GETKEYS {command!r}: {reply}")
                keys_of[command] = []
            else:  # str: redis-py decodes these replies (str_if_bytes); keys are ASCII
                keys_of[command] = [k.encode() for k in reply]
        return keys_of

    async def cross_slot(self, names: dict[str, str]) -> dict[str, set[str]]:
        """What a Redis Cluster would refuse as CROSSSLOT: a script whose declared keys, or
        a command whose keys, hash to more than one slot. Name (a script's, or a command's)
        -> the families of the keys of each such call, joined with ``+``."""
        from graph_core.keys import key_slot  # the test's own copy of the rule is redis-py's

        found: dict[str, set[str]] = defaultdict(set)
        for call in self.calls:
            if len({key_slot(k) for k in call.declared}) > 1:
                name = names.get(call.sha, f"script {call.sha[:8]}")
                found[name].add(" + ".join(sorted({family(k) for k in call.declared})))
        plain = {
            tuple(c)
            for c in self.commands
            if c[0].upper() not in (b"EVALSHA", b"EVAL", b"MONITOR", b"ECHO", b"MULTI", b"EXEC")
        }
        client = aioredis.Redis.from_url(self.url)
        try:
            keys_of = await self._keys_of(client, plain)
        finally:
            await client.aclose()
        for command, keys in keys_of.items():
            if len({key_slot(k) for k in keys}) > 1:
                found[command[0].decode().upper()].add(
                    " + ".join(sorted({family(k) for k in keys}))
                )
        return dict(found)

    async def undeclared(self, names: dict[str, str]) -> dict[str, set[str]]:
        """Script name -> the families of the keys it touched but did not declare, and of
        what it declared that is no key (``''``, or a prefix ending in ``:``)."""
        client = aioredis.Redis.from_url(self.url)
        found: dict[str, set[str]] = defaultdict(set)
        try:
            keys_of = await self._keys_of(
                client, {tuple(c) for call in self.calls for c in call.inner}
            )
            for call in self.calls:
                name = names.get(call.sha, f"script {call.sha[:8]}")
                declared = set(call.declared)
                for key in call.declared:
                    if key == b"" or key.endswith(b":"):
                        found[name].add(f"declared, not a key: {key.decode()!r}")
                for command in call.inner:
                    for key in keys_of[tuple(command)]:
                        if key not in declared:
                            found[name].add(family(key))
        finally:
            await client.aclose()
        return dict(found)
