"""redis-py's cluster client failing inside itself, made by its own code, for tests of what
the processes do about it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from redis.asyncio.cluster import ClusterPipeline, PipelineCommand

__all__ = ["client_fault"]


async def client_fault() -> AttributeError:
    """What redis-py's async cluster pipeline raises, from its own code, when a node failed
    it and another caller reset the shared client meanwhile (no default node left:
    redis/redis-py#3835)."""

    async def failed(commands: list[PipelineCommand]) -> bool:
        for command in commands:
            command.result = ConnectionError("Connection closed by server.")
        return True  # some command failed

    async def owner(*args: Any, **kwargs: Any) -> list[Any]:
        return [node]

    node = SimpleNamespace(name="127.0.0.1:7000", execute_pipeline=failed)
    client = SimpleNamespace(
        _is_node_flag=lambda target: False, _determine_nodes=owner, get_default_node=lambda: None
    )
    pipeline: Any = ClusterPipeline  # its constructor needs a real client: not called
    pipe = pipeline.__new__(pipeline)
    try:
        await pipe._execute(client, [PipelineCommand(0, "GET", "k")], raise_on_error=False)
    except AttributeError as e:
        return e
    raise AssertionError("redis-py's cluster pipeline no longer fails that way")
