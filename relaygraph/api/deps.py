"""What every route needs: the process's ``ApiContext`` and the caller, checked for a role."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from dispatcher.client import WorkflowClient
from graph_core.errors import RelaygraphError
from graph_core.keys import Keys, check_run_id
from relaygraph.api.auth import ANONYMOUS, ApiKeys, Principal, Role
from relaygraph.api.events import EventHub
from relaygraph.api.metrics import ApiMetrics
from relaygraph.api.problems import Problem
from relaygraph.api.settings import ApiSettings

__all__ = [
    "Admin",
    "ApiContext",
    "Approver",
    "Ctx",
    "Submitter",
    "Viewer",
    "context",
    "presented_key",
    "require",
    "run_id_param",
]


@dataclass
class ApiContext:
    """One API process's state: settings, keys, the Redis client, the event hub, metrics.
    Everything a request changes lives in Redis, so any number of processes can serve."""

    settings: ApiSettings
    keys: ApiKeys
    redis: Any
    client: WorkflowClient
    hub: EventHub
    metrics: ApiMetrics

    @property
    def rkeys(self) -> Keys:
        return self.client.keys


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's ``Principal``, which must have ``role`` (401 without a
    known key, 403 without the role). Without configured keys everyone is ``anonymous``,
    an admin (the API then listens on loopback only, unless started ``--insecure``)."""

    async def caller(request: Request) -> Principal:
        ctx = context(request)
        if not ctx.keys.enabled:
            if request.method == "POST" and not _json_body(request):
                # Without keys, a POST another site's page makes (a form: no preflight) must
                # not act: only JSON, which a browser sends cross-site only after CORS allows.
                raise Problem(
                    415,
                    "json-required",
                    "without API keys, POST requests must be Content-Type: application/json",
                )
            return ANONYMOUS
        presented = presented_key(request)
        if not presented:
            raise _unauthorized("no API key: send 'Authorization: Bearer <key>' or X-API-Key")
        principal = ctx.keys.authenticate(presented)
        if principal is None:
            raise _unauthorized("unknown API key")
        if not principal.may(role):
            raise Problem(
                403,
                "forbidden",
                f"key {principal.name!r} ({', '.join(sorted(r.label for r in principal.roles))})"
                f" may not do this: it needs the {role.label} role",
            )
        return principal

    return caller


def _unauthorized(detail: str) -> Problem:
    problem = Problem(401, "unauthorized", detail)
    problem.headers["WWW-Authenticate"] = "Bearer"
    return problem


def run_id_param(run_id: str) -> str:
    """A run id from a path: one that cannot be a run id is a run that is not there (404)."""
    try:
        return check_run_id(run_id)
    except RelaygraphError:
        raise Problem(404, "run-not-found", f"run {run_id!r} not found (not a run id)") from None


Ctx = Annotated[ApiContext, Depends(context)]
Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Submitter = Annotated[Principal, Depends(require(Role.SUBMITTER))]
Approver = Annotated[Principal, Depends(require(Role.APPROVER))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def _json_body(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return kind == "application/json"


def presented_key(request: Request) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>`` or ``X-API-Key``. (Read
    here rather than through FastAPI's security classes: their sub-dependencies cost a
    tenth of a submit; the OpenAPI document declares the schemes, see ``app.py``.)"""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, credentials = auth.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key")
