"""Request and response bodies of the HTTP API (they make its OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from dispatcher.views import RunSummary, RunView
from graph_core.history import HistoryStep
from graph_core.messages import MAX_PRIORITY

__all__ = [
    "Accepted",
    "ApprovalItem",
    "ApprovalList",
    "DecisionBody",
    "GraphList",
    "GraphRef",
    "GraphSummary",
    "GraphVersions",
    "Health",
    "LegacyRunBody",
    "LegacyRunCreated",
    "ProblemDetails",
    "ProblemItem",
    "PublicRunView",
    "PublicWait",
    "Ready",
    "RunBody",
    "RunHistory",
    "RunPage",
    "public_document",
    "public_view",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GraphRef(BaseModel):
    graph_id: str
    version: int


class GraphSummary(BaseModel):
    graph_id: str
    latest_version: int


class GraphList(BaseModel):
    graphs: list[GraphSummary]


class GraphVersions(BaseModel):
    graph_id: str
    versions: list[int]


class RunBody(_Body):
    graph_id: str = Field(min_length=1, max_length=256)
    version: int | None = Field(default=None, ge=1, description="default: the latest")
    input: Any = None
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="the same key again returns the first run (200) instead of a new one",
    )
    run_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_\-]{1,128}$", description="default: a new id"
    )
    priority: int = Field(
        default=0,
        ge=0,
        le=MAX_PRIORITY,
        description="0 (lowest) to 100: a queue's ready jobs of higher-priority runs go first",
    )


class LegacyRunBody(_Body):
    """Seed 001's ``POST /graph/run``."""

    graph_id: str = Field(min_length=1, max_length=256)
    input: Any = None


class LegacyRunCreated(BaseModel):
    run_id: str


class PublicWait(BaseModel):
    """A node waiting for a decision. The API keeps the wait token to itself."""

    node_id: str
    prompt: Any = None
    since: float
    visit: int
    run_id: str | None = None  # the child run where it waits (None: this run)


class PublicRunView(RunView):
    """A run as ``relaygraph status --json`` shows it, without the wait tokens."""

    waiting: list[PublicWait]  # type: ignore[assignment]


def public_view(view: RunView) -> PublicRunView:
    return PublicRunView.model_validate(public_document(view))


def public_document(view: RunView) -> dict[str, Any]:
    """The ``PublicRunView`` document of ``view`` (its JSON, without the wait tokens)."""
    doc = view.model_dump(mode="json")
    for wait in doc["waiting"]:
        wait.pop("token", None)
    return doc


class RunPage(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


class RunHistory(BaseModel):
    run_id: str
    steps: list[HistoryStep]


class RerunBody(_Body):
    from_node: str = Field(
        min_length=1, description="this node and everything downstream run again"
    )
    input: Any = Field(default=None, description="replaces the run's input, when given")


class DecisionBody(_Body):
    data: dict[str, Any] | None = None
    comment: str | None = Field(default=None, max_length=4096)


class Accepted(BaseModel):
    """A decision was sent; its outcome shows in the run's events and status. ``run_id`` is
    the run it went to: a child run's when the node waits there."""

    run_id: str
    node_id: str
    visit: int
    decision: str
    actor: str


class ApprovalItem(BaseModel):
    run_id: str
    graph_id: str
    graph_version: int
    node_id: str
    visit: int
    prompt: Any = None
    since: float
    approvers: list[str] | None = Field(
        default=None, description="the node's config.approvers (null: any approver)"
    )
    may_decide: bool = Field(description="whether the calling key may approve or reject it")


class ApprovalList(BaseModel):
    approvals: list[ApprovalItem]


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str = Field(description="ready, or not-ready with the reasons")
    redis: bool
    dispatchers: int = Field(description="dispatchers that read the inbox lately")
    queues: dict[str, int] = Field(description="jobs in each served queue")
    reasons: list[str] = []


class ProblemItem(BaseModel):
    """One thing wrong with a request body or a graph: where, and what."""

    path: str = Field(description="e.g. body.graph_id, query.limit, nodes[1].parent")
    message: str
    code: str | SkipJsonSchema[None] = Field(default=None, description="a graph problem's kind")


class ProblemDetails(BaseModel):
    """An error, as an RFC 9457 ``application/problem+json`` document. ``type`` is stable
    per kind of error (``urn:relaygraph:problem:<slug>``); other members may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="urn:relaygraph:problem:<slug>, e.g. ...:run-not-found")
    title: str
    status: int
    detail: str
    # The optional members are left out when they do not apply, never null.
    instance: str | SkipJsonSchema[None] = Field(default=None, description="the request's path")
    problems: list[ProblemItem] | SkipJsonSchema[None] = Field(
        default=None, description="invalid-body and invalid-graph: every problem found"
    )
    run_id: str | SkipJsonSchema[None] = Field(default=None, description="run-not-found: the run")
