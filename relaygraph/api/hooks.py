"""Triggers and limits over HTTP: signed webhook calls (``POST /v1/hooks/{graph_id}/
{trigger_id}``, no API key: the signature is the credential), events (``POST
/v1/events/{event}``, a submitter's key), each starting the runs its trigger names
(graph_core.triggers); the triggers' list (``GET /v1/triggers``); and the fleet-wide limits
(``GET /v1/limits``, ``PUT`` / ``DELETE /v1/limits/{scope}``, an admin's key to change)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from graph_core import clock
from graph_core.limits import MAX_RUNNING, LimitError
from graph_core.triggers import (
    SIGNATURE_HEADER,
    SIGNATURE_WINDOW_S,
    signature_id,
    triggers_of,
    verify,
)
from relaygraph.api.deps import Admin, Ctx, Submitter, Viewer
from relaygraph.api.problems import Problem, problem_responses

__all__ = ["EmitBody", "LimitBody", "Started", "router"]

router = APIRouter(tags=["triggers"])


class Started(BaseModel):
    """The runs a webhook call or an event started."""

    runs: list[dict[str, str]]


class EmitBody(BaseModel):
    data: Any = None
    idempotency_key: str | None = None


class LimitBody(BaseModel):
    max_running: int | None = Field(default=None, ge=1, le=MAX_RUNNING)
    rate: str | None = Field(default=None, description='"N/s", "N/min" or "N/hour"')
    burst: float | None = Field(default=None, ge=1)


@router.post(
    "/v1/hooks/{graph_id}/{trigger_id}",
    status_code=201,
    response_model=Started,
    responses=problem_responses(400, 401, 404, 409, 413, 422, 503),
)
async def webhook(graph_id: str, trigger_id: str, request: Request, ctx: Ctx) -> Response:
    """A signed call of a graph's webhook trigger starts a run with the JSON body as its
    input (201). The ``X-Relaygraph-Signature`` header is ``t=<epoch>,v1=<hex HMAC-SHA256
    of "<epoch>." + body>`` with the secret in the environment variable the trigger names
    (``secret_env``); a signature older than 5 minutes, or one already used, is refused."""
    version = await ctx.client.store.latest_version(graph_id)
    graph = await ctx.client.get_graph(graph_id, version) if version is not None else None
    spec = None
    if graph is not None:
        spec = next(
            (t for t in triggers_of(graph) if t.id == trigger_id and t.type == "webhook"), None
        )
    if graph is None or spec is None:
        raise Problem(
            404, "trigger-not-found", f"graph {graph_id!r} has no webhook trigger {trigger_id!r}"
        )
    secret = os.environ.get(spec.secret_env or "")
    if not secret:
        raise Problem(
            503,
            "trigger-unconfigured",
            f"webhook {trigger_id!r} of graph {graph_id!r}: its secret variable "
            f"{spec.secret_env!r} is not set on this API host",
        )
    body = await request.body()
    header = request.headers.get(SIGNATURE_HEADER)
    why = verify(secret, body, header, clock.now())
    if why is not None:
        raise Problem(401, "bad-signature", why)
    digest = hashlib.sha256(signature_id(header or "").encode()).hexdigest()
    fresh = await ctx.redis.set(
        ctx.rkeys.hook_seen(digest), "1", nx=True, ex=2 * SIGNATURE_WINDOW_S
    )
    if not fresh:
        raise Problem(409, "replayed", "this signed call was already received (a replay)")
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as e:
        raise Problem(422, "invalid-body", f"the body is not JSON: {e}") from None
    run_id = await ctx.client.submit(
        graph_id, data, version=version, idempotency_key=f"hook:{graph_id}:{trigger_id}:{digest}"
    )
    doc = {"runs": [{"graph_id": graph_id, "run_id": run_id}]}
    return Response(orjson.dumps(doc), 201, media_type="application/json")


@router.post(
    "/v1/events/{event}",
    status_code=200,
    response_model=Started,
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)
async def emit(event: str, body: EmitBody, ctx: Ctx, who: Submitter) -> Started:
    """Send an event: every graph whose event trigger names it (and whose filter matches
    ``data``) starts a run with ``data`` as its input; the runs started (maybe none)."""
    started = await ctx.client.emit(event, body.data, idempotency_key=body.idempotency_key)
    return Started(runs=[{"graph_id": g, "run_id": r} for g, r in started])


@router.get("/v1/triggers", responses=problem_responses(401, 403, 503))
async def list_triggers(ctx: Ctx, who: Viewer) -> dict[str, Any]:
    """Every trigger that fires, of every graph's latest version, with the next fire time of
    scheduled ones (what ``relaygraph triggers`` lists)."""
    return {"triggers": await ctx.client.triggers()}


@router.get("/v1/limits", responses=problem_responses(401, 403, 503))
async def list_limits(ctx: Ctx, who: Viewer) -> dict[str, Any]:
    """Every scope's fleet-wide limits, with its jobs running and held back now."""
    return {"limits": await ctx.client.limits()}


@router.put("/v1/limits/{scope}", responses=problem_responses(400, 401, 403, 413, 422, 503))
async def set_limit(scope: str, body: LimitBody, ctx: Ctx, who: Admin) -> dict[str, Any]:
    """Set a scope's limits (``queue:NAME``, ``type:NAME`` or a queue name): workers apply
    them from their next claim. A bad scope or rate is 422."""
    try:
        limit = await ctx.client.set_limit(
            scope, max_running=body.max_running, rate=body.rate, burst=body.burst
        )
    except LimitError as e:
        raise Problem(422, "invalid-limit", str(e)) from None
    return {"scope": scope, "limit": limit.describe()}


@router.delete("/v1/limits/{scope}", responses=problem_responses(401, 403, 404, 422, 503))
async def clear_limit(scope: str, ctx: Ctx, who: Admin) -> dict[str, Any]:
    """Remove a scope's limits; 404 when it had none."""
    try:
        had = await ctx.client.clear_limit(scope)
    except LimitError as e:
        raise Problem(422, "invalid-limit", str(e)) from None
    if not had:
        raise Problem(404, "limit-not-found", f"{scope!r} has no limits")
    return {"scope": scope, "cleared": True}
