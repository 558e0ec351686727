"""Run routes: submit, list, read, history, cancel, events, and approvals."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from dispatcher.views import NodeView, RunView, load_summaries
from graph_core import clock
from graph_core.status import NodeStatus, RunStatus
from relaygraph.api.actions import decide, operate, waiting_decisions
from relaygraph.api.auth import Role
from relaygraph.api.deps import (
    ApiContext,
    Approver,
    Ctx,
    Submitter,
    Viewer,
    context,
    require,
    run_id_param,
)
from relaygraph.api.events import all_events, check_event_id, stream_of_run
from relaygraph.api.models import (
    Accepted,
    ApprovalItem,
    ApprovalList,
    DecisionBody,
    LegacyRunBody,
    LegacyRunCreated,
    PublicRunView,
    RerunBody,
    RunBody,
    RunHistory,
    RunPage,
    public_document,
    public_view,
)
from relaygraph.api.problems import Problem, problem_responses

__all__ = ["router"]

router = APIRouter(tags=["runs"])

MAX_PAGE = 500
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _view(ctx: ApiContext, run_id: str) -> RunView:
    view = await ctx.client.get_run(run_id_param(run_id))
    if view is None:
        raise Problem(
            404, "run-not-found", f"run {run_id!r} not found (never submitted, or expired)"
        )
    return view


async def _submit(
    ctx: ApiContext, body: RunBody, request: Request | None = None
) -> tuple[str, bool]:
    """Start a run; return its id and whether it is new (not an idempotent repeat). The
    request's W3C ``traceparent`` / ``tracestate`` headers, if any, make the run's span a
    child of the caller's (with tracing on; docs/observability.md)."""
    run_id = body.run_id or clock.new_run_id()
    headers = request.headers if request is not None else {}
    got = await ctx.client.submit(
        body.graph_id,
        body.input,
        idempotency_key=body.idempotency_key,
        version=body.version,
        run_id=run_id,
        traceparent=_header(headers, "traceparent", 256),
        tracestate=_header(headers, "tracestate", 4096),
        priority=body.priority,
    )
    created = got == run_id
    if created:
        ctx.metrics.runs_submitted.labels(body.graph_id).inc()
    return got, created


@router.post(
    "/v1/runs",
    status_code=201,
    response_model=PublicRunView,
    responses={
        200: {
            "model": PublicRunView,
            "description": "the run an earlier submit with this key started",
        },
        **problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunBody"}}},
        }
    },
)
async def post_run(request: Request) -> Response:
    """Start a run of a registered graph: 201 with the run and its ``Location``; with an
    ``idempotency_key`` already used, 200 and that run.

    The busiest route, so it takes the request itself: the caller's key and the body are
    checked here rather than by FastAPI's dependency and body machinery (a third of a
    submit's CPU); the answers are the same (401/403, 422 with every problem)."""
    ctx = context(request)
    await _SUBMITTER(request)
    body = await _run_body(request)
    run_id, created = await _submit(ctx, body, request)
    view = await _new_view(ctx, run_id) if created else None
    doc = public_document(view if view is not None else await _view(ctx, run_id))
    location = str(request.url_for("get_run", run_id=run_id).path)
    return _json(doc, 201 if created else 200, {"Location": location})


@router.get("/v1/runs", response_model=RunPage, responses=problem_responses(401, 422, 503))
async def list_runs(
    *,
    status: RunStatus | None = None,
    graph_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: str | None = None,
    ctx: Ctx,
    _: Viewer,
) -> RunPage:
    """Runs, newest first (with ``status``: newest to enter it first), a page at a time:
    pass ``next_cursor`` back as ``cursor``. Runs started meanwhile do not shift pages."""
    before = _decode_cursor(cursor) if cursor else None
    store = ctx.client.store
    page = await store.page_runs(status.value if status else None, graph_id, limit, before)
    summaries = await load_summaries(store, [run_id for run_id, _ in page])
    next_cursor = _encode_cursor(page[-1]) if len(page) == limit else None
    return RunPage(runs=summaries, next_cursor=next_cursor)


def _encode_cursor(last: tuple[str, int]) -> str:
    return base64.urlsafe_b64encode(f"{last[1]}:{last[0]}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, run_id = text.split(":", 1)
        return int(score), run_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(
            422, "invalid-cursor", f"cursor {cursor!r} is not one this API gave out"
        ) from None


@router.get(
    "/v1/runs/{run_id}",
    response_model=PublicRunView,
    name="get_run",
    responses=problem_responses(401, 404, 422, 503),
)
async def get_run(  # response: PublicRunView
    *,
    run_id: str,
    ctx: Ctx,
    _: Viewer,
) -> Response:
    return _json(public_document(await _view(ctx, run_id)))


_SUBMITTER = require(Role.SUBMITTER)


async def _run_body(request: Request) -> RunBody:
    """The body as a ``RunBody``; a ``RequestValidationError`` as FastAPI would raise."""
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        error = {"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error"}
        raise RequestValidationError([{**error, "input": {}, "ctx": {"error": str(e)}}]) from e
    try:
        return RunBody.model_validate(data)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
        raise RequestValidationError(errors) from e


def _header(headers: Any, name: str, limit: int) -> str | None:
    value = headers.get(name)
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A document that is already the route's response model, sent as it is: FastAPI would
    validate and serialize it again (a third of a submit's cost)."""
    return Response(orjson.dumps(doc), status, headers, media_type="application/json")


async def _new_view(ctx: ApiContext, run_id: str) -> RunView | None:
    """The view of a run this request just created, from its record alone (one round trip
    instead of a whole view's load): every node pending, nothing waiting, no history yet.
    None once a dispatcher has moved it on (then the whole view is loaded)."""
    store = ctx.client.store
    run = await store.get_run(run_id)
    if run is None or run.status != RunStatus.PENDING:
        return None
    graph = await store.graph(run.graph_id, run.graph_version)
    pending = NodeView(status=NodeStatus.PENDING, visits=0, attempts=0)
    return RunView(
        run_id=run.run_id,
        graph_id=run.graph_id,
        graph_version=run.graph_version,
        status=run.status,
        input=run.input,
        created_at=run.created_at,
        updated_at=run.updated_at,
        nodes={n.id: pending for n in graph.nodes},
        waiting=[],
        history_length=0,
    )


@router.get(
    "/v1/runs/{run_id}/history",
    response_model=RunHistory,
    responses=problem_responses(401, 404, 422, 503),
)
async def run_history(
    *,
    run_id: str,
    ctx: Ctx,
    _: Viewer,
) -> RunHistory:
    """The run's steps as ``relaygraph history`` shows them: event, node, visit, keys
    changed, duration."""
    steps = await ctx.client.history_steps(run_id_param(run_id))
    return RunHistory(run_id=run_id, steps=steps)


@router.post(
    "/v1/runs/{run_id}/cancel",
    status_code=202,
    response_model=PublicRunView,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def cancel_run(
    *,
    run_id: str,
    ctx: Ctx,
    who: Submitter,
) -> PublicRunView:
    """Ask the dispatchers to cancel the run (202; the run turns ``cancelled`` shortly).
    A finished run is 409."""
    view = await operate(ctx, who, run_id, "cancel")
    return public_view(view) if view is not None else public_view(await _view(ctx, run_id))


@router.post(
    "/v1/runs/{run_id}/pause",
    status_code=202,
    response_model=PublicRunView,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def pause_run(*, run_id: str, ctx: Ctx, who: Submitter) -> Response:
    """Pause the run (202): running nodes finish, nothing new starts, timers wait until it
    resumes. A run that is not running is 409."""
    await operate(ctx, who, run_id, "pause")
    return _json(public_document(await _view(ctx, run_id)), 202)


@router.post(
    "/v1/runs/{run_id}/resume",
    status_code=202,
    response_model=PublicRunView,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def resume_run(*, run_id: str, ctx: Ctx, who: Submitter) -> Response:
    """Resume a paused run (202); a run that is not paused is 409."""
    await operate(ctx, who, run_id, "resume")
    return _json(public_document(await _view(ctx, run_id)), 202)


@router.post(
    "/v1/runs/{run_id}/retry",
    status_code=202,
    response_model=PublicRunView,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def retry_run(*, run_id: str, ctx: Ctx, who: Submitter) -> Response:
    """Retry a failed run from the nodes that failed or that its failure stopped, keeping
    every completed output (202); a run that is not failed is 409."""
    await operate(ctx, who, run_id, "retry")
    return _json(public_document(await _view(ctx, run_id)), 202)


@router.post(
    "/v1/runs/{run_id}/rerun",
    status_code=202,
    response_model=PublicRunView,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422, 503),
)
async def rerun_run(*, run_id: str, body: RerunBody, ctx: Ctx, who: Submitter) -> Response:
    """Run a completed, failed or cancelled run again from ``from_node``: it and everything
    downstream start afresh, everything upstream is kept; ``input``, when the body has it,
    replaces the run's input (202). A run still going is 409; an unknown node 422."""
    rid = run_id_param(run_id)
    given = {"input": body.input} if "input" in body.model_fields_set else {}
    await ctx.client.rerun(rid, body.from_node, actor=who.name, **given)
    return _json(public_document(await _view(ctx, rid)), 202)


@router.get(
    "/v1/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "resumed after the run's end: nothing more will come"},
        **problem_responses(401, 404, 422, 503),
    },
)
async def run_event_stream(
    *,
    run_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[str | None, Query(description="as Last-Event-ID, for EventSource")] = None,
    ctx: Ctx,
    _: Viewer,
) -> Response:
    """Server-Sent Events: the run's history after ``Last-Event-ID`` (or from the start),
    then its events live; the stream ends after the run's terminal event. Each event's
    ``id`` is its history entry id; a comment line every 15 s keeps the connection open."""
    try:
        start = check_event_id(last_event_id or after)
    except ValueError as e:
        raise Problem(422, "invalid-event-id", str(e)) from None
    rid = run_id_param(run_id)
    try:
        frames = await stream_of_run(ctx.redis, ctx.hub, rid, ctx.rkeys.run(rid), start)
    except LookupError:
        raise Problem(
            404, "run-not-found", f"run {run_id!r} not found (never submitted, or expired)"
        ) from None
    if frames is None:  # resumed after the run's end: nothing more will come
        return Response(status_code=204)
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **problem_responses(401)},
)
async def every_event_stream(*, ctx: Ctx, _: Viewer) -> StreamingResponse:
    """Server-Sent Events: every run's events as they are published (live only)."""
    return StreamingResponse(
        all_events(ctx.hub), media_type="text/event-stream", headers=SSE_HEADERS
    )


# --- approvals -----------------------------------------------------------------------------


@router.post(
    "/v1/runs/{run_id}/nodes/{node_id:path}/approve",
    status_code=202,
    response_model=Accepted,
    tags=["approvals"],
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422, 503),
)
async def approve(
    *,
    run_id: str,
    node_id: str,
    body: DecisionBody | None = None,
    ctx: Ctx,
    who: Approver,
) -> Accepted:
    """Approve a waiting node, as the calling key (the API holds the wait token). 409 if
    the node is not waiting; 403 if the node's ``config.approvers`` does not list the key."""
    body = body or DecisionBody()
    return await decide(ctx, who, run_id, node_id, "approve", body.data, body.comment)


@router.post(
    "/v1/runs/{run_id}/nodes/{node_id:path}/reject",
    status_code=202,
    response_model=Accepted,
    tags=["approvals"],
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422, 503),
)
async def reject(
    *,
    run_id: str,
    node_id: str,
    body: DecisionBody | None = None,
    ctx: Ctx,
    who: Approver,
) -> Accepted:
    """Reject a waiting node; see approve."""
    body = body or DecisionBody()
    return await decide(ctx, who, run_id, node_id, "reject", body.data, body.comment)


@router.get(
    "/v1/approvals",
    response_model=ApprovalList,
    tags=["approvals"],
    responses=problem_responses(401, 503),
)
async def approvals(*, ctx: Ctx, who: Viewer) -> ApprovalList:
    """An approver's inbox: every node waiting for a decision, across runs, oldest first."""
    items = [
        ApprovalItem(
            run_id=d.run.run_id,
            graph_id=d.run.graph_id,
            graph_version=d.run.graph_version,
            node_id=d.wait.node_id,
            visit=d.wait.visit,
            prompt=d.wait.prompt,
            since=d.wait.since,
            approvers=d.approvers,
            may_decide=d.may,
        )
        for d in await waiting_decisions(ctx, who)
    ]
    return ApprovalList(approvals=items)


# --- seed 001's routes -------------------------------------------------------------------


@router.post(
    "/graph/run",
    status_code=201,
    response_model=LegacyRunCreated,
    tags=["seed-001"],
    responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
)
async def legacy_run(
    *,
    body: LegacyRunBody,
    ctx: Ctx,
    _: Submitter,
) -> LegacyRunCreated:
    """Seed 001's run start: ``{graph_id, input}`` → ``{run_id}``."""
    run_id, _created = await _submit(ctx, RunBody(graph_id=body.graph_id, input=body.input))
    return LegacyRunCreated(run_id=run_id)


@router.get(
    "/graph/state/{run_id}",
    response_model=PublicRunView,
    tags=["seed-001"],
    responses=problem_responses(401, 404, 422, 503),
)
async def legacy_state(
    *,
    run_id: str,
    ctx: Ctx,
    _: Viewer,
) -> PublicRunView:
    """Seed 001's run state: the same as ``GET /v1/runs/{run_id}``."""
    return public_view(await _view(ctx, run_id))
