"""graph_core.resp.OneByOne: what a cluster client's refused pipelines become (commands
sent one at a time), answering as a pipeline does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from graph_core.resp import OneByOne, script_pipeline


class _Client:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    async def get(self, key: str) -> str:
        self.sent.append(("get", (key,)))
        if key == "bad":
            raise ValueError("wrong type")
        return key.upper()

    async def execute_command(self, *args: Any) -> int:
        self.sent.append(("execute_command", args))
        return 1


def test_commands_go_in_order_and_errors_stand_in_their_place() -> None:
    client = _Client()
    pipe = OneByOne(client)
    pipe.get("a")
    pipe.get("bad")
    pipe.publish("channel", "message")  # no method of its own: sent as a command
    assert len(pipe) == 3
    replies = asyncio.run(pipe.execute(raise_on_error=False))
    assert replies[0] == "A" and isinstance(replies[1], ValueError) and replies[2] == 1
    assert client.sent[2] == ("execute_command", ("PUBLISH", "channel", "message"))
    assert len(pipe) == 0  # reset: it can be used again


def test_raise_on_error_sends_everything_then_raises_the_first_error() -> None:
    client = _Client()
    pipe = OneByOne(client)
    pipe.get("bad")
    pipe.get("b")
    with pytest.raises(ValueError, match="wrong type"):
        asyncio.run(pipe.execute())
    assert [args for _, args in client.sent] == [("bad",), ("b",)]


def test_only_an_asyncio_cluster_client_gets_one() -> None:
    class Pipelined:
        def pipeline(self, transaction: bool = True) -> str:
            return f"pipeline(transaction={transaction})"

    assert script_pipeline(Pipelined()) == "pipeline(transaction=False)"
    RedisCluster = type("RedisCluster", (), {"__module__": "redis.asyncio.cluster"})
    assert isinstance(script_pipeline(RedisCluster()), OneByOne)
