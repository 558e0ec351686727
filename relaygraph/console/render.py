"""What every console page shares: the templates, who is signed in, and error pages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import orjson
from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from relaygraph.api.auth import Principal, Role
from relaygraph.api.deps import ApiContext
from relaygraph.api.problems import Problem, as_problem
from relaygraph.console.session import check_csrf, csrf_token, signed_in

__all__ = ["SSE_HEADERS", "action_who", "guard", "render", "templates"]

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["pretty"] = lambda value: orjson.dumps(
    value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
).decode()
templates.env.filters["when"] = lambda ts: (
    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""
)
templates.env.filters["secs"] = lambda s: "" if s is None else f"{s:.3f}s"

SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def render(
    request: Request, name: str, who: Principal | None, code: int = 200, **data: Any
) -> HTMLResponse:
    response = HTMLResponse("")
    csrf = csrf_token(request, response)
    page = templates.TemplateResponse(
        request,
        name,
        {"who": who, "csrf": csrf, "Role": Role, "path": request.url.path, **data},
        status_code=code,
    )
    for key, value in response.headers.items():
        if key == "set-cookie":
            page.headers.append(key, value)
    return page


async def guard(request: Request, ctx: ApiContext, page: Any) -> Response:
    """Run a page: not signed in → the sign-in page; an error → an error page."""
    who = signed_in(request, ctx)
    if who is None:
        return RedirectResponse(f"/ui/login?next={request.url.path}", status_code=303)
    try:
        response: Response = await page(who)
        return response
    except Exception as e:
        problem = as_problem(e)
        if problem is None:
            raise
        return render(request, "error.html", who, problem.status, problem=problem)


def action_who(request: Request, ctx: ApiContext, csrf: str | None, role: Role) -> Principal:
    """The signed-in caller of an action, which must repeat its CSRF token and have ``role``."""
    who = signed_in(request, ctx)
    if who is None:
        raise Problem(401, "unauthorized", "sign in first")
    if not check_csrf(request, csrf):
        raise Problem(403, "csrf", "missing or wrong CSRF token: reload the page")
    if not who.may(role):
        raise Problem(
            403, "forbidden", f"key {who.name!r} may not do this: it needs the {role.label} role"
        )
    return who
