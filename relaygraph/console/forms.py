"""The console's actions (``/ui``, POST): sign in and out, approve, reject, cancel,
validate and register. Each checks the CSRF token and the same roles and approver lists as
the API, whatever the page showed."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from dispatcher.client import load_graph
from graph_core.errors import GraphValidationError
from relaygraph.api.actions import OPERATIONS, decide, operate
from relaygraph.api.auth import Role
from relaygraph.api.deps import Ctx
from relaygraph.api.problems import Problem
from relaygraph.console.render import action_who, render
from relaygraph.console.session import check_csrf, forget, remember

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_COMMENT = 4096  # as the API's DecisionBody


# --- sign-in -------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, ctx: Ctx, next: str = "/ui/runs") -> Response:
    if not ctx.keys.enabled:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login")
async def login(
    request: Request,
    ctx: Ctx,
    key: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/ui/runs",
) -> Response:
    if not check_csrf(request, csrf):
        return render(request, "login.html", None, 403, next=next, error="Expired form: try again.")
    who = ctx.keys.authenticate(key.strip()) if key else None
    if who is None:
        return render(request, "login.html", None, 401, next=next, error="Unknown API key.")
    response = RedirectResponse(_safe_next(next), status_code=303)
    remember(request, response, key.strip())
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    if not check_csrf(request, csrf):
        raise Problem(403, "csrf", "missing or wrong CSRF token")
    response = RedirectResponse("/ui/login", status_code=303)
    forget(response)
    return response


def _safe_next(target: str) -> str:
    """Only a path inside the console: never an open redirect."""
    return target if target.startswith("/ui/") and "//" not in target else "/ui/runs"


@router.post("/runs/{run_id}/nodes/{node_id:path}/{decision}")
async def decide_action(
    request: Request,
    ctx: Ctx,
    run_id: str,
    node_id: str,
    decision: str,
    comment: Annotated[str, Form()] = "",
    data: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    who = action_who(request, ctx, csrf, Role.APPROVER)
    if decision not in ("approve", "reject"):
        raise Problem(404, "not-found", f"no action {decision!r}: approve or reject")
    if len(comment) > MAX_COMMENT:
        raise Problem(422, "invalid-input", f"the comment is over {MAX_COMMENT} characters")
    payload: dict[str, Any] | None = None
    if data.strip():
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise Problem(422, "invalid-input", f"data is not JSON: {e}") from None
        if not isinstance(payload, dict):
            raise Problem(422, "invalid-input", "data must be a JSON object")
    accepted = await decide(
        ctx, who, run_id, node_id, "approve" if decision == "approve" else "reject",
        payload, comment.strip() or None,
    )  # fmt: skip
    return JSONResponse(
        {"message": f"{decision}d {node_id} as {who.name}", **accepted.model_dump()}, 202
    )


@router.post("/runs/{run_id}/{operation}")
async def run_action(
    request: Request,
    ctx: Ctx,
    run_id: str,
    operation: str,
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Pause, resume, retry or cancel: the API's checks (``relaygraph.api.actions``)."""
    who = action_who(request, ctx, csrf, Role.SUBMITTER)
    if operation not in OPERATIONS:
        raise Problem(404, "not-found", f"no action {operation!r}: {', '.join(sorted(OPERATIONS))}")
    await operate(ctx, who, run_id, operation)  # type: ignore[arg-type]  # checked above
    return JSONResponse({"message": f"{operation} requested by {who.name}"}, 202)


@router.post("/graphs")
async def register_action(
    request: Request,
    ctx: Ctx,
    graph: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    register_it: Annotated[str, Form(alias="register")] = "",
) -> Response:
    who = action_who(request, ctx, csrf, Role.VIEWER if not register_it else Role.SUBMITTER)
    problems: list[dict[str, str]] = []
    registered = None
    try:
        doc = orjson.loads(graph)
        if not isinstance(doc, dict):
            raise Problem(422, "invalid-input", "a graph is a JSON object")
        parsed = load_graph(doc)
        if register_it:
            version = await ctx.client.register_graph(parsed)
            registered = (parsed.id, version)
    except orjson.JSONDecodeError as e:
        problems = [{"code": "not_json", "path": "graph", "message": f"not valid JSON: {e}"}]
    except GraphValidationError as e:
        problems = [p.to_dict() for p in e.problems]
    return render(
        request, "validate_result.html", who, problems=problems, registered=registered, checked=True
    )
