"""``SyncWorkflowClient``: ``WorkflowClient`` for blocking code.

It runs its own event loop in a background thread and hands each call to it, so it works the
same from scripts, threads and frameworks that are not async.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from dispatcher.client import GraphSource, WorkflowClient
from dispatcher.store import DEFAULT_RETENTION_S
from dispatcher.views import RunSummary, RunView
from graph_core.history import HistoryStep
from graph_core.keys import DEFAULT_PREFIX
from graph_core.messages import DEFAULT_MAX_MESSAGE_BYTES
from graph_core.status import RunStatus

__all__ = ["SyncWorkflowClient"]

T = TypeVar("T")


class SyncWorkflowClient:
    """Blocking twin of ``WorkflowClient``: ``with SyncWorkflowClient.from_url(url) as c: ...``"""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retention_s: int = DEFAULT_RETENTION_S,
        shards: int = 0,
    ) -> None:
        """``shards``: the deployment's key layout, as ``WorkflowClient``'s."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="relaygraph-client", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def make() -> WorkflowClient:  # the pool belongs to the loop that uses it
            return WorkflowClient.from_url(
                url,
                prefix=prefix,
                max_message_bytes=max_message_bytes,
                retention_s=retention_s,
                shards=shards,
            )

        self.client = self._call(make())

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retention_s: int = DEFAULT_RETENTION_S,
        shards: int = 0,
    ) -> SyncWorkflowClient:
        return cls(
            url,
            prefix=prefix,
            max_message_bytes=max_message_bytes,
            retention_s=retention_s,
            shards=shards,
        )

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("SyncWorkflowClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the connections and stop the background loop. Idempotent."""
        if self._closed:
            return
        try:
            self._call(self.client.aclose())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the WorkflowClient API, blocking -----------------------------------------------

    def register_graph(self, graph: GraphSource) -> int:
        return self._call(self.client.register_graph(graph))

    def submit(
        self,
        graph_id: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        version: int | None = None,
        run_id: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> str:
        return self._call(
            self.client.submit(
                graph_id,
                input,
                idempotency_key=idempotency_key,
                version=version,
                run_id=run_id,
                traceparent=traceparent,
                tracestate=tracestate,
            )
        )

    def get_run(self, run_id: str) -> RunView | None:
        return self._call(self.client.get_run(run_id))

    def wait(self, run_id: str, timeout: float | None = None) -> RunView:
        return self._call(self.client.wait(run_id, timeout))

    def approve(
        self,
        run_id: str,
        node_id: str,
        data: dict[str, Any] | None = None,
        *,
        actor: str | None = None,
        token: str | None = None,
        durable: bool = True,
    ) -> None:
        self._call(
            self.client.approve(run_id, node_id, data, actor=actor, token=token, durable=durable)
        )

    def reject(
        self,
        run_id: str,
        node_id: str,
        data: dict[str, Any] | None = None,
        *,
        actor: str | None = None,
        token: str | None = None,
        durable: bool = True,
    ) -> None:
        self._call(
            self.client.reject(run_id, node_id, data, actor=actor, token=token, durable=durable)
        )

    def cancel(self, run_id: str, reason: str = "cancelled", actor: str | None = None) -> None:
        self._call(self.client.cancel(run_id, reason, actor))

    def pause(self, run_id: str, reason: str = "paused", actor: str | None = None) -> None:
        self._call(self.client.pause(run_id, reason, actor))

    def resume(self, run_id: str, actor: str | None = None) -> None:
        self._call(self.client.resume(run_id, actor))

    def retry(self, run_id: str, actor: str | None = None) -> None:
        self._call(self.client.retry(run_id, actor))

    def list_runs(
        self, status: RunStatus | str | None = None, limit: int = 100, graph_id: str | None = None
    ) -> list[RunSummary]:
        return self._call(self.client.list_runs(status, limit, graph_id))

    def history(self, run_id: str) -> list[dict[str, Any]]:
        return self._call(self.client.history(run_id))

    def history_steps(self, run_id: str) -> list[HistoryStep]:
        return self._call(self.client.history_steps(run_id))

    def events(self, run_id: str | None = None, poll_s: float = 0.5) -> Iterator[dict[str, Any]]:
        """Live events (of ``run_id`` only, when given) until the caller stops iterating."""
        stream = self._call(self.client.subscribe(run_id).open())
        try:
            while True:
                event = self._call(stream.get(timeout=poll_s))
                if event is not None:
                    yield event
        finally:
            if not self._closed:
                self._call(stream.close())
