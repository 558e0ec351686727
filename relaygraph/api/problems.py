"""Errors as RFC 9457 ``application/problem+json`` documents with a stable ``type``.

Every error the API answers goes through here: ``Problem`` raised by a route, the library
errors a route lets through (unknown run, invalid graph, Redis unreachable), request
validation, unknown routes, and anything unexpected (a 500 without a traceback, logged).
Each route lists the problem statuses it may answer (``problem_responses``), so the OpenAPI
document declares them, with the ``ProblemDetails`` schema, in place of FastAPI's own 422.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError as PydanticValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dispatcher.connect import redis_unavailable
from dispatcher.errors import InputError, NodeNotWaiting, RunExists, RunNotFound, RunStateError
from dispatcher.store import GraphNotFound, StoreError
from graph_core.errors import GraphValidationError, RelaygraphError
from graph_core.keys import PerShard
from relaygraph.api.models import ProblemDetails

__all__ = [
    "PROBLEM_JSON",
    "Problem",
    "install_handlers",
    "problem_response",
    "problem_responses",
    "problem_type",
]

log = logging.getLogger("relaygraph.api")

PROBLEM_JSON: Final = "application/problem+json"
_TYPE_BASE: Final = "urn:relaygraph:problem:"
_SCHEMAS: Final = "#/components/schemas/"

_TITLES: Final = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem_type(slug: str) -> str:
    """The stable ``type`` URI of a problem kind (``urn:relaygraph:problem:<slug>``)."""
    return _TYPE_BASE + slug


class Problem(Exception):
    """An error answer: ``status``, a stable ``slug`` (its ``type``), a human ``detail``,
    and extension members (``problems``, ``run_id``, ...)."""

    def __init__(self, status: int, slug: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


def problem_response(
    status: int, slug: str, detail: str, instance: str | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: the problem documents it may answer with, by status."""
    ref = {"$ref": _SCHEMAS + ProblemDetails.__name__}
    return {
        status: {"description": _TITLES[status], "content": {PROBLEM_JSON: {"schema": ref}}}
        for status in statuses
    }


def _document_problems(app: FastAPI) -> None:
    """Put ``ProblemDetails`` (which ``problem_responses`` refers to) in the app's OpenAPI
    components: FastAPI adds a response model's schema only under the route's own media
    type, never under ``application/problem+json``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()  # kept as app.openapi_schema: completed in place, once
        schema = ProblemDetails.model_json_schema(
            ref_template=_SCHEMAS + "{model}", mode="serialization"
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(schema.pop("$defs", {}))
        schemas[ProblemDetails.__name__] = schema
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _from(request: Request, problem: Problem) -> Response:
    response = problem_response(
        problem.status, problem.slug, problem.detail, request.url.path, **problem.extra
    )
    response.headers.update(problem.headers)
    return response


def as_problem(error: Exception) -> Problem | None:
    """The problem a library error means, or None for one the API does not expect."""
    if isinstance(error, Problem):
        return error
    if redis_unavailable(error):
        # unreachable, or a replica / a server out of memory, loading, without replicas
        return Problem(503, "redis-unavailable", f"Redis is unavailable: {error}")
    if isinstance(error, PydanticValidationError):
        return Problem(422, "invalid-input", _pydantic_detail(error))
    if isinstance(error, GraphValidationError):
        problems = [p.to_dict() for p in error.problems]
        return Problem(
            422, "invalid-graph", f"the graph has {len(problems)} problem(s)", problems=problems
        )
    if isinstance(error, RunNotFound):
        return Problem(404, "run-not-found", str(error), run_id=error.run_id)
    if isinstance(error, GraphNotFound):
        return Problem(404, "graph-not-found", str(error))
    if isinstance(error, NodeNotWaiting):
        return Problem(409, "node-not-waiting", str(error))
    if isinstance(error, RunStateError):
        return Problem(409, "run-state", str(error), run_id=error.run_id, run_status=error.status)
    if isinstance(error, RunExists):
        return Problem(409, "run-exists", str(error))
    if isinstance(error, StoreError):
        return Problem(409, "conflict", str(error))
    if isinstance(error, PerShard):  # a sharded deployment (Redis Cluster) cannot do it yet
        return Problem(501, "not-implemented", f"not supported in the sharded layout yet: {error}")
    if isinstance(error, InputError | RelaygraphError):
        return Problem(422, "invalid-input", str(error))
    return None


def _pydantic_detail(error: PydanticValidationError) -> str:
    """A model's validation error in a line: where and what, without pydantic's URL."""
    parts = []
    for err in error.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ())) or error.title
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    """Answer every error as a problem document, and declare that schema in the app's
    OpenAPI document."""
    _document_problems(app)

    async def on_problem(request: Request, exc: Exception) -> Response:
        problem = as_problem(exc)
        if problem is None:
            log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
            problem = Problem(500, "internal", "an unexpected error; it is logged on the server")
        return _from(request, problem)

    async def on_validation(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):  # registered for that type only
            return await on_problem(request, exc)
        problems = [_describe(err) for err in exc.errors()]
        detail = "; ".join(f"{p['path']}: {p['message']}" for p in problems)
        return _from(request, Problem(422, "invalid-body", detail, problems=problems))

    async def on_http(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # registered for that type only
            return await on_problem(request, exc)
        slug = {
            400: "unreadable-body",  # FastAPI's answer to a body it cannot decode (not UTF-8)
            404: "not-found",
            405: "method-not-allowed",
        }.get(exc.status_code, "http-error")
        problem = Problem(exc.status_code, slug, str(exc.detail))
        problem.headers.update(exc.headers or {})
        return _from(request, problem)

    app.add_exception_handler(Exception, on_problem)
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RelaygraphError, on_problem)
    app.add_exception_handler(RedisConnectionError, on_problem)
    app.add_exception_handler(RedisTimeoutError, on_problem)
    app.add_exception_handler(ResponseError, on_problem)
    app.add_exception_handler(PydanticValidationError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def _describe(err: Any) -> dict[str, Any]:
    """One request-validation error in the API's words: where, and what was wrong."""
    loc = [str(x) for x in err.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        where, rest = loc[0], loc[1:]
    else:
        where, rest = "body", loc
    path = where + "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in rest)
    kind = err.get("type", "")
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a known field"
    elif kind == "json_invalid":
        message = f"is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
    else:
        message = str(err.get("msg", "is invalid"))
        if "input" in err and kind not in ("missing",):
            message += f" (got {_short(err['input'])})"
    return {"path": path, "message": message}


def _short(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
