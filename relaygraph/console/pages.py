"""The console's pages (``/ui``): runs, a run, the approvals inbox, graphs, event streams.

Pages are rendered on the server (Jinja2, autoescaped); ``?fragment=1`` renders only the
live part of a page, which the page's script fetches again when an event arrives.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from dispatcher.views import load_summaries
from graph_core.keys import is_run_id
from graph_core.status import RunStatus
from relaygraph.api.actions import decisions_of, waiting_decisions
from relaygraph.api.auth import Principal
from relaygraph.api.deps import ApiContext, Ctx, run_id_param
from relaygraph.api.events import all_events, check_event_id, stream_of_run
from relaygraph.api.problems import Problem
from relaygraph.console.render import SSE_HEADERS, guard, render
from relaygraph.console.session import signed_in
from relaygraph.console.svg import graph_svg

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

PAGE: Final = 50
_SCORE: Final = re.compile(r"[0-9]{1,20}")  # a cursor's index score (ms)


# --- runs ----------------------------------------------------------------------------------


@router.get("/runs")
async def runs_page(
    request: Request,
    ctx: Ctx,
    status: str = "",
    graph: str = "",
    q: str = "",
    cursor: str = "",
    fragment: bool = False,
) -> Response:
    async def page(who: Principal) -> Response:
        store = ctx.client.store
        chosen = RunStatus(status) if status in RunStatus.__members__.values() else None
        found: list[Any] = []
        next_cursor = None
        if q:
            view = await ctx.client.get_run(q.strip()) if is_run_id(q.strip()) else None
            found = [view] if view is not None else []
        else:
            before = _cursor(cursor)
            page = await store.page_runs(
                chosen.value if chosen else None, graph or None, PAGE, before
            )
            found = await load_summaries(store, [r for r, _ in page])
            if len(page) == PAGE:
                next_cursor = f"{page[-1][1]}:{page[-1][0]}"
        counts = await _counts(ctx)
        graphs = sorted(await store.graph_ids())
        name = "runs_live.html" if fragment else "runs.html"
        return render(
            request,
            name,
            who,
            runs=found,
            counts=counts,
            graphs=graphs,
            status=chosen.value if chosen else "",
            graph=graph,
            q=q,
            next_cursor=next_cursor,
            statuses=[s.value for s in RunStatus],
        )

    return await guard(request, ctx, page)


def _cursor(text: str) -> tuple[int, str] | None:
    score, _, run_id = text.partition(":")
    return (int(score), run_id) if _SCORE.fullmatch(score) and run_id else None


async def _counts(ctx: ApiContext) -> dict[str, int]:
    return await ctx.client.store.count_by_status([s.value for s in RunStatus])


@router.get("/runs/{run_id}")
async def run_page(request: Request, ctx: Ctx, run_id: str, fragment: bool = False) -> Response:
    async def page(who: Principal) -> Response:
        view = await ctx.client.get_run(run_id_param(run_id))
        if view is None:
            raise Problem(
                404, "run-not-found", f"run {run_id!r} not found (never submitted, or expired)"
            )
        graph = await ctx.client.get_graph(view.graph_id, view.graph_version)
        steps = await ctx.client.history_steps(run_id)
        statuses = {nid: node.status.value for nid, node in view.nodes.items()}
        waits = decisions_of(who, view, graph)
        return render(
            request,
            "run_live.html" if fragment else "run.html",
            who,
            run=view,
            graph=graph,
            svg=graph_svg(graph, statuses),
            steps=steps,
            waits=waits,
            child_waits=[w for w in view.waiting if w.run_id is not None],
            types={n.id: n.type for n in graph.nodes},
        )

    return await guard(request, ctx, page)


@router.get("/runs/{run_id}/events")
async def run_stream(request: Request, ctx: Ctx, run_id: str) -> Response:
    if signed_in(request, ctx) is None:
        raise Problem(401, "unauthorized", "sign in first")
    rid = run_id_param(run_id)
    try:
        after = check_event_id(request.headers.get("last-event-id"))
    except ValueError:
        after = None  # a browser sends back what it got: start over rather than fail
    try:
        frames = await stream_of_run(ctx.redis, ctx.hub, rid, ctx.rkeys.run(rid), after)
    except LookupError:
        raise Problem(404, "run-not-found", f"run {run_id!r} not found") from None
    if frames is None:  # the page has seen the run's end: stop its EventSource
        return Response(status_code=204)
    return StreamingResponse(_unnamed(frames), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/events")
async def every_stream(request: Request, ctx: Ctx) -> Response:
    if signed_in(request, ctx) is None:
        raise Problem(401, "unauthorized", "sign in first")
    return StreamingResponse(
        _unnamed(all_events(ctx.hub)), media_type="text/event-stream", headers=SSE_HEADERS
    )


async def _unnamed(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The frames without their ``event:`` line: a browser's EventSource hands only unnamed
    events to ``onmessage``, and the page wants every one."""
    async for frame in frames:
        yield b"\n".join(ln for ln in frame.split(b"\n") if not ln.startswith(b"event: "))


# --- approvals and graphs ------------------------------------------------------------------


@router.get("/approvals")
async def approvals_page(request: Request, ctx: Ctx, fragment: bool = False) -> Response:
    async def page(who: Principal) -> Response:
        items = await waiting_decisions(ctx, who)
        name = "approvals_live.html" if fragment else "approvals.html"
        return render(request, name, who, items=items)

    return await guard(request, ctx, page)


@router.get("/graphs")
async def graphs_page(request: Request, ctx: Ctx) -> Response:
    async def page(who: Principal) -> Response:
        latest = await ctx.client.store.graph_ids()
        rows = []
        for gid, version in latest.items():
            rows.append(
                {
                    "id": gid,
                    "latest": version,
                    "versions": await ctx.client.store.graph_versions(gid),
                }
            )
        return render(request, "graphs.html", who, graphs=rows)

    return await guard(request, ctx, page)


@router.get("/graphs/{graph_id:path}")
async def graph_page(
    request: Request, ctx: Ctx, graph_id: str, version: int | None = None
) -> Response:
    async def page(who: Principal) -> Response:
        graph = await ctx.client.get_graph(graph_id, version)
        versions = await ctx.client.store.graph_versions(graph_id)
        doc = orjson.dumps(graph.to_dict(), option=orjson.OPT_INDENT_2).decode()
        return render(
            request,
            "graph.html",
            who,
            graph=graph,
            svg=graph_svg(graph),
            versions=versions,
            doc=doc,
        )

    return await guard(request, ctx, page)
