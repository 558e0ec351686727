"""``create_app``: the HTTP API as an ASGI application (FastAPI).

The app keeps nothing of its own between requests: runs, graphs, waits and events live in
Redis, so several API processes behind a load balancer serve the same deployment.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.client import WorkflowClient
from dispatcher.connect import connect, connect_sync, refuse_cluster
from dispatcher.fleet import FleetCollector
from graph_core.errors import RelaygraphError
from relaygraph import __version__
from relaygraph.api import graphs, hooks, ops, runs
from relaygraph.api.auth import ApiKeys
from relaygraph.api.deps import ApiContext
from relaygraph.api.events import EventHub
from relaygraph.api.metrics import ApiMetrics
from relaygraph.api.models import RunBody
from relaygraph.api.problems import install_handlers, problem_response
from relaygraph.api.settings import ApiSettings

__all__ = ["create_app"]

log = logging.getLogger("relaygraph.api")

DESCRIPTION = """\
Register graphs, start and follow runs, approve and reject waiting nodes.

Authenticate with an API key: `Authorization: Bearer <key>` (or `X-API-Key: <key>`).
Roles: **viewer** reads; **submitter** also registers graphs, starts and cancels runs;
**approver** also approves and rejects; **admin** may do everything. Errors are
`application/problem+json` (RFC 9457) with a stable `type`.
"""


def create_app(
    settings: ApiSettings, keys: ApiKeys | None = None, redis: Any = None, *, console: bool = True
) -> FastAPI:
    """The API for ``settings`` (its Redis URL, prefix, limits), with ``keys`` (default: the
    settings' keys document and file). ``redis``: an async client to use instead of one
    made from ``settings.redis_url`` (its owner closes it). ``console``: also serve the web
    console (``/ui``, and ``/`` redirecting there)."""
    if keys is None:
        keys = ApiKeys.load(settings.api_keys, settings.api_keys_file)
    if redis is None and settings.redis_url is None:
        raise RelaygraphError("no Redis URL: pass --redis or set RELAYGRAPH_REDIS_URL")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            client_redis = redis
            if client_redis is None:
                timeout = settings.api_redis_timeout_s
                client_redis = connect(
                    settings.redis_url or "",
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                )
                stack.push_async_callback(client_redis.aclose)
            await refuse_cluster(client_redis)
            client = WorkflowClient(
                client_redis,
                prefix=settings.prefix,
                max_message_bytes=settings.max_message_bytes,
                retention_s=settings.retention_s,
                shards=settings.shards,
            )
            await client.check_layout()  # read-only: the API may hold a reader's ACL
            hub = EventHub(client_redis, client.keys)
            stack.push_async_callback(hub.close)
            metrics = ApiMetrics()
            if settings.redis_url is not None:
                _add_fleet(stack, metrics, settings)
            app.state.ctx = ApiContext(settings, keys, client_redis, client, hub, metrics)
            yield

    app = FastAPI(
        title="relaygraph",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(runs.router)
    app.include_router(graphs.router)
    app.include_router(ops.router)
    app.include_router(hooks.router)
    if console:
        from relaygraph.console import install  # Jinja2 and the templates: only when served

        install(app)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
            expose_headers=["Location"],
        )
    if not keys.enabled and not settings.api_insecure:
        # Without keys the API trusts whoever reaches it, so only loopback names: a web page
        # whose name a DNS rebinding points at 127.0.0.1 is refused (400).
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    app.add_middleware(Timing)
    _declare_security(app)
    return app


LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "::1", "[::1]")

SECURITY_SCHEMES: Final = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer <key>`",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key"},
}


def _declare_security(app: FastAPI) -> None:
    """The key schemes in the OpenAPI document, required by every operation that can answer
    401 (keys are read in ``deps.require``, not through FastAPI's security classes)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        components = doc.setdefault("components", {})
        components["securitySchemes"] = SECURITY_SCHEMES
        # POST /v1/runs reads its body itself (routes in runs.py): its schema, named here
        schemas = components.setdefault("schemas", {})
        schemas["RunBody"] = RunBody.model_json_schema(ref_template="#/components/schemas/{model}")
        for path, operations in doc.get("paths", {}).items():
            for operation in operations.values():
                if path.startswith("/v1/hooks/"):  # signed with the trigger's secret
                    operation["security"] = []
                elif "401" in operation.get("responses", {}):
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _add_fleet(
    stack: contextlib.AsyncExitStack, metrics: ApiMetrics, settings: ApiSettings
) -> None:
    """The fleet gauges (queues, inbox, runs by status) in the API's /metrics, read at
    scrape time through a blocking client of their own (the scrape runs in a thread)."""
    timeout = settings.api_redis_timeout_s
    sync = connect_sync(
        settings.redis_url or "", socket_timeout=timeout, socket_connect_timeout=timeout
    )
    stack.callback(sync.close)
    collector = FleetCollector(sync, settings.keys)
    metrics.registry.register(collector)


DRAIN_BYTES: Final = 32 * 1024 * 1024  # what a refused body may still send before the 413


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413: by its Content-Length, or, for a
    chunked body, once the bytes read pass the limit. A body is read whole (it is at most
    ``limit`` bytes) before the app sees it, so no route ever parses a partial one."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, receive, send, more=True)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send, more=message.get("more_body", False))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, *, more: bool) -> None:
        """Answer 413; ``more``: the client has more of the body to send."""
        # Read (and drop) what the client is still sending, up to a bound: a server that
        # answers and closes with unread bytes makes the client see a reset, not the 413.
        drained = 0
        while more and drained < DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                break
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        response = problem_response(
            413,
            "body-too-large",
            f"the request body is over the {self.limit}-byte limit (api_max_body_bytes)",
            scope.get("path"),
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class Timing:
    """Count every answered request, by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        started = False

        def count(status: int) -> None:
            ctx = getattr(scope["app"].state, "ctx", None) if "app" in scope else None
            if ctx is not None:
                template = getattr(scope.get("route"), "path", None) or "unmatched"
                ctx.metrics.request(scope["method"], template, status, time.perf_counter() - start)

        async def timed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed)
        except Exception:
            if not started:  # the outermost error handler answers 500 after this
                count(500)
            raise
