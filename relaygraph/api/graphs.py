"""Graph routes: register, list, read, validate, export."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import PlainTextResponse

from dispatcher.client import load_graph
from dispatcher.store import GraphNotFound
from graph_core.export import to_dot, to_mermaid
from graph_core.model import Graph
from relaygraph.api.deps import ApiContext, Ctx, Submitter, Viewer, run_id_param
from relaygraph.api.models import GraphList, GraphRef, GraphSummary, GraphVersions
from relaygraph.api.problems import Problem, problem_responses

__all__ = ["router"]

router = APIRouter(tags=["graphs"])

GraphDoc = Annotated[
    dict[str, Any],
    Body(
        description="A graph document (docs/graph-format.md)",
        examples=[
            {
                "id": "hello",
                "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "end"}],
                "edges": [{"source": "start", "target": "end"}],
            }
        ],
    ),
]


async def register(ctx: ApiContext, doc: dict[str, Any]) -> GraphRef:
    graph = load_graph(doc)  # GraphValidationError: 422 with every problem
    version = await ctx.client.register_graph(graph)
    return GraphRef(graph_id=graph.id, version=version)


@router.post(
    "/v1/graphs",
    status_code=201,
    response_model=GraphRef,
    responses=problem_responses(400, 401, 403, 409, 413, 422, 503),
)
async def post_graph(
    *,
    doc: GraphDoc,
    ctx: Ctx,
    _: Submitter,
) -> GraphRef:
    """Validate and register a graph (the same content again is a no-op; other content
    under a registered version is 409)."""
    return await register(ctx, doc)


@router.post(
    "/v1/graphs/validate", response_model=GraphRef, responses=problem_responses(400, 401, 413, 422)
)
async def validate_graph(
    *,
    doc: GraphDoc,
    _: Viewer,
) -> GraphRef:
    """Check a graph without registering it: 200, or 422 listing every problem."""
    graph = load_graph(doc)
    return GraphRef(graph_id=graph.id, version=graph.version)


@router.get("/v1/graphs", response_model=GraphList, responses=problem_responses(401, 503))
async def list_graphs(*, ctx: Ctx, _: Viewer) -> GraphList:
    latest = await ctx.client.store.graph_ids()
    return GraphList(graphs=[GraphSummary(graph_id=g, latest_version=v) for g, v in latest.items()])


@router.get(
    "/v1/graphs/{graph_id:path}/versions",
    response_model=GraphVersions,
    responses=problem_responses(401, 404, 422, 503),
)
async def graph_versions(
    *,
    graph_id: str,
    ctx: Ctx,
    _: Viewer,
) -> GraphVersions:
    versions = await ctx.client.store.graph_versions(graph_id)
    if not versions:
        raise GraphNotFound(graph_id, None)
    return GraphVersions(graph_id=graph_id, versions=versions)


@router.get(
    "/v1/graphs/{graph_id:path}/export",
    response_class=PlainTextResponse,
    responses=problem_responses(401, 404, 409, 422, 503),
)
async def export_graph(
    *,
    graph_id: str,
    format: Literal["mermaid", "dot"] = "mermaid",
    version: Annotated[int | None, Query(ge=1)] = None,
    run_id: str | None = None,
    ctx: Ctx,
    _: Viewer,
) -> PlainTextResponse:
    """The graph as Mermaid or DOT text; with ``run_id``, nodes coloured by their status in
    that run (the run's own graph version), with a legend."""
    statuses: dict[str, str] | None = None
    if run_id is not None:
        view = await ctx.client.get_run(run_id_param(run_id))
        if view is None:
            raise Problem(404, "run-not-found", f"run {run_id!r} not found")
        if view.graph_id != graph_id:
            raise Problem(
                409,
                "run-of-another-graph",
                f"run {run_id!r} is a run of graph {view.graph_id!r}, not {graph_id!r}",
            )
        version = view.graph_version
        statuses = {nid: node.status.value for nid, node in view.nodes.items()}
    graph: Graph = await ctx.client.get_graph(graph_id, version)
    if format == "dot":
        text = to_dot(graph, statuses, legend=statuses is not None)
    else:
        text = to_mermaid(graph, statuses, legend=statuses is not None)
    return PlainTextResponse(text)


# Registered last: a graph id may hold "/" (the :path routes above match its suffixes first).
@router.get("/v1/graphs/{graph_id:path}", responses=problem_responses(401, 404, 422, 503))
async def get_graph(
    *,
    graph_id: str,
    version: Annotated[int | None, Query(ge=1)] = None,
    ctx: Ctx,
    _: Viewer,
) -> dict[str, Any]:
    """The graph document (the latest version, or ``?version=N``)."""
    graph = await ctx.client.get_graph(graph_id, version)
    return graph.to_dict()


# --- seed 001's routes -------------------------------------------------------------------


@router.post(
    "/graph/create",
    status_code=201,
    response_model=GraphRef,
    tags=["seed-001"],
    responses=problem_responses(400, 401, 403, 409, 413, 422, 503),
)
async def legacy_create(
    *,
    doc: GraphDoc,
    ctx: Ctx,
    _: Submitter,
) -> GraphRef:
    """Seed 001's graph creation: the same as ``POST /v1/graphs``."""
    return await register(ctx, doc)
