"""Server handles for the fixtures in ``tests/conftest.py``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from relaygraph.embedded import AppendFsync, EmbeddedServer
from relaygraph.embedded_cluster import EmbeddedCluster

__all__ = ["ExternalServer", "ServerFactory", "cluster_url"]


@dataclass(frozen=True)
class ExternalServer:
    """A server the suite did not start (``RELAYGRAPH_TEST_REDIS_URL``): only a URL."""

    url: str


class ServerFactory:
    """Makes extra `EmbeddedServer`s for one test; the fixture stops them all afterwards."""

    def __init__(self) -> None:
        self.servers: list[EmbeddedServer] = []

    def __call__(
        self,
        *,
        appendonly: bool = False,
        appendfsync: AppendFsync = "everysec",
        data_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> EmbeddedServer:
        """A new server, started unless ``start=False``."""
        server = EmbeddedServer(
            appendonly=appendonly,
            appendfsync=appendfsync,
            data_dir=data_dir,
            extra_args=extra_args,
        )
        self.servers.append(server)
        return server.start() if start else server

    def stop_all(self) -> None:
        with contextlib.ExitStack() as stack:  # stops every server even if one stop fails
            for server in self.servers:
                stack.callback(server.stop)


def cluster_url(cluster: EmbeddedCluster) -> str:
    """The ``redis+cluster://`` URL of every node of ``cluster``."""
    return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
