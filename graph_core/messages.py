"""Wire formats shared by the dispatcher, the workers and outside services (pure code).

* **Inbox** (Redis stream ``<prefix>:inbox``): each entry has exactly one field, ``m``,
  holding a JSON object whose ``kind`` is ``submit``, ``approval`` or ``cancel`` (sent by
  anyone), or ``reported``, ``timer``, ``lease_expired`` or ``fail`` (relaygraph's own). A
  non-Python service submits a run with ``XADD relaygraph:inbox * m '{"kind":"submit",
  "graph_id":"g","input":{...}}'`` (see docs/protocol.md).
* **Approvals** (pub/sub channel ``<prefix>:approvals``): a JSON ``ApprovalReceived`` without
  ``kind`` needed: ``{"run_id","node_id","decision","data","actor","token"}``.
* **Jobs** (arq queues): arq's job envelope, serialized with orjson (never pickle), whose one
  argument is a ``JobPayload``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from graph_core.errors import MessageError
from graph_core.events import (
    ApprovalReceived,
    CancelRequested,
    ChildFinished,
    FailRequested,
    LeaseExpired,
    NodeReported,
    ParentRef,
    PauseRequested,
    RerunRequested,
    ResumeRequested,
    RetryRequested,
    TimerFired,
)

__all__ = [
    "ARQ_FUNCTION",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "INBOX_FIELD",
    "JOB_ID_PREFIX",
    "MAX_PRIORITY",
    "MAX_TRACEPARENT",
    "MAX_TRACESTATE",
    "PRIORITY_STEP_MS",
    "InboxMessage",
    "JobPayload",
    "SubmitRequest",
    "decode_arq_job",
    "dumps",
    "encode_arq_job",
    "encode_inbox",
    "encode_lease",
    "inbox_entry_raw",
    "job_id",
    "job_item",
    "parse_approval",
    "parse_inbox",
    "parse_inbox_entry",
    "parse_job_id",
    "parse_job_payload",
    "parse_wake_token",
    "wake_token",
]

ARQ_FUNCTION: Final = "relaygraph_run_node"
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576  # 1 MiB per message (outputs, inputs)
INBOX_FIELD: Final = "m"  # the one field of an inbox stream entry: the message
MAX_TRACEPARENT: Final = 256  # characters; version 00 of W3C's traceparent has 55
MAX_TRACESTATE: Final = 4096  # characters; W3C asks to pass on at least 512
_INBOX_FIELD_B: Final = INBOX_FIELD.encode()
_NAMED_FIELDS = 5  # how many of an entry's field names a reason lists
MAX_PRIORITY: Final = 100  # a run's priority: 0 (the default, the lowest) to 100
# A job's queue score is its enqueue time (ms) less priority x this: a higher priority sorts
# first whatever its time (a step is ~115 days), and every score stays due at once.
PRIORITY_STEP_MS: Final = 10_000_000_000


class SubmitRequest(BaseModel):
    """Start a run of a registered graph (``graph_version`` None: the latest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    kind: Literal["submit"] = "submit"
    graph_id: str = Field(min_length=1)
    graph_version: int | None = Field(default=None, ge=1)
    input: Any = None
    run_id: str | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    # The submitter's W3C trace context: the run's span becomes a child of this span. A
    # value that does not parse is ignored (the run starts a trace of its own), as W3C
    # Trace Context asks; only a dispatcher with tracing = "otel" reads them.
    traceparent: str | None = Field(default=None, max_length=MAX_TRACEPARENT)
    tracestate: str | None = Field(default=None, max_length=MAX_TRACESTATE)
    # A child run's parent (relaygraph's own: a subgraph node or a map item starts it)
    parent: ParentRef | None = None
    # Among the ready jobs of a queue, workers take those of higher-priority runs first
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY)


InboxMessage = Annotated[
    SubmitRequest
    | NodeReported
    | ApprovalReceived
    | CancelRequested
    | PauseRequested
    | ResumeRequested
    | RetryRequested
    | RerunRequested
    | TimerFired
    | LeaseExpired
    | FailRequested
    | ChildFinished,
    Field(discriminator="kind"),
]
_INBOX: TypeAdapter[Any] = TypeAdapter(InboxMessage)


class JobPayload(BaseModel):
    """The one argument of a node job: which attempt of which visit of which node."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    run_id: str
    graph_id: str
    graph_version: int
    node_id: str
    visit: int
    attempt: int
    timeout_s: float | None = None
    parent: str | None = None
    # True: run the node's compensation (its ``compensate`` handler), not the node. Left
    # out of the job when None.
    compensate: bool | None = None
    # A map node's item (its index): run the map's inner node on that item. Left out of
    # the job when None.
    item: int | None = Field(default=None, ge=0)
    # The handler type the job runs (the node's, a map's inner node's, a compensation's):
    # fleet-wide limits per type read it. Left out of the job when None.
    type: str | None = None
    # The run's span (W3C Trace Context), when the run is traced: the parent of the worker's
    # span of this attempt. Left out of the job when None.
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts of one visit (of one map item): what a handler's side
        effects key on."""
        base = f"{self.run_id}:{self.node_id}:{self.visit}"
        return base if self.item is None else f"{base}:{self.item}"


def dumps(value: Any) -> bytes:
    """orjson with the options relaygraph uses everywhere (non-str dict keys allowed)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _loads(raw: bytes | str, kind: str, max_bytes: int) -> Any:
    if len(raw) > max_bytes:
        raise MessageError(kind, f"{len(raw)} bytes is over the {max_bytes}-byte limit")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MessageError(kind, f"not JSON ({e})") from e


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "message"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_inbox(raw: bytes | str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Parse one inbox message; raise ``MessageError`` saying what is wrong."""
    data = _loads(raw, "inbox", max_bytes)
    if not isinstance(data, dict):
        raise MessageError("inbox", "expected a JSON object")
    try:
        return _INBOX.validate_python(data)
    except ValidationError as e:
        raise MessageError("inbox", _explain(e)) from e


def parse_inbox_entry(
    fields: Mapping[bytes, bytes], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Any:
    """Parse one inbox stream entry (its field -> value map): exactly one field ``m``
    holding one message. Raise ``MessageError`` saying what is wrong, naming the fields of
    an entry that is not shaped like that (a typo in the field name must not read as a
    message that is "not JSON")."""
    raw = fields.get(_INBOX_FIELD_B)
    if raw is None or len(fields) != 1:
        others = [name for name in fields if name != _INBOX_FIELD_B]
        listed = ", ".join(repr(_field_name(n)) for n in others[:_NAMED_FIELDS])
        if len(others) > _NAMED_FIELDS:
            listed += f" and {len(others) - _NAMED_FIELDS} more"
        if raw is None:
            found = f"its fields: {listed}" if others else "it has no fields"
            reason = f"the entry has no field {INBOX_FIELD!r} ({found})"
        else:
            reason = (
                f"the entry has fields other than {INBOX_FIELD!r} ({listed}); an inbox "
                f"entry has exactly one field, {INBOX_FIELD!r}"
            )
        raise MessageError("inbox", reason)
    if not raw:
        raise MessageError("inbox", f"field {INBOX_FIELD!r} is empty")
    return parse_inbox(raw, max_bytes)


def inbox_entry_raw(fields: Mapping[bytes, bytes]) -> bytes:
    """What a dead letter of this entry keeps as ``raw``: its message, or, for an entry
    that is not exactly one field ``m``, all its fields as one JSON object."""
    raw = fields.get(_INBOX_FIELD_B)
    if raw is not None and len(fields) == 1:
        return raw
    return dumps({_field_name(k): v.decode("utf-8", "replace") for k, v in fields.items()})


def _field_name(name: bytes) -> str:
    return name.decode("utf-8", "replace")[:64]


def encode_inbox(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode()


def encode_lease(
    run_id: str,
    node_id: str,
    visit: int,
    attempt: int,
    deadline: float | None = None,
    item: int | None = None,
) -> bytes:
    """``encode_inbox(LeaseExpired(...))``, byte for byte, without building the model: a
    worker makes one for every job it claims (the member of the leases zset). The
    arguments are trusted (the worker's own job ids); ``LeaseExpired`` validates on
    parsing."""
    fields: dict[str, Any] = {
        "v": 1,
        "kind": "lease_expired",
        "run_id": run_id,
        "node_id": node_id,
        "visit": visit,
        "attempt": attempt,
    }
    if deadline is not None:
        fields["deadline"] = float(deadline)
    if item is not None:
        fields["item"] = item
    return orjson.dumps(fields)


def parse_approval(
    raw: bytes | str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ApprovalReceived:
    """Parse an approval published on the approvals channel."""
    data = _loads(raw, "approval", max_bytes)
    if not isinstance(data, dict):
        raise MessageError("approval", "expected a JSON object")
    data.setdefault("kind", "approval")
    try:
        return ApprovalReceived.model_validate(data)
    except ValidationError as e:
        raise MessageError("approval", _explain(e)) from e


JOB_ID_PREFIX: Final = "rg:"


def job_id(
    run_id: str, node_id: str, visit: int, attempt: int, item: int | None = None, tag: str = ""
) -> str:
    """Deterministic arq job id: a duplicate enqueue of the same attempt is a no-op. A map
    item's job names its item after the visit (``visit.item``: node ids have no dots).
    ``tag``: the run's shard tag in the sharded layout (``Keys.job_id`` gives it), put
    first as ``rg:{<tag>}:``, so that arq's keys of the job share the run's cluster slot."""
    where = str(visit) if item is None else f"{visit}.{item}"
    shard = f"{{{tag}}}:" if tag else ""
    return f"{JOB_ID_PREFIX}{shard}{run_id}:{node_id}:{where}:{attempt}"


def wake_token(job: str, graph_id: str, graph_version: int, score: int | None = None) -> str:
    """What the dispatcher pushes on a queue's wake-up list for a job: its id, its graph (so
    a worker that has the graph cached plans the job's reads before claiming it) and the
    job's queue score (``apply.lua`` adds it as ``<graph_version>@<score>``: a claim that
    finds the job still at that score knows it is due without reading the server's clock).
    Job ids never contain ``|`` (node ids cannot); graph ids may, so the id comes last."""
    version = str(graph_version) if score is None else f"{graph_version}@{score}"
    return f"{job}|{version}|{graph_id}"


def parse_wake_token(value: str) -> tuple[str, tuple[str, int] | None, int | None]:
    """``(job id, (graph id, version) or None, score or None)`` of a wake-up token; a bare
    job id (an older dispatcher's) has no graph, an older token no score."""
    job, sep, rest = value.partition("|")
    version, sep2, graph_id = rest.partition("|")
    version, at, score = version.partition("@")
    if not sep or not sep2 or not graph_id or not _digits(version):
        return job, None, None
    scored = bool(at) and _digits(score.removeprefix("-"))  # a garbled score: read the clock
    return job, (graph_id, int(version)), int(score) if scored else None


@functools.lru_cache(maxsize=4096)  # a worker asks twice per job; the answer never changes
def parse_job_id(value: str) -> tuple[str, str, int, int] | None:
    """``(run_id, node_id, visit, attempt)`` of a ``job_id``, or None if ``value`` is not
    one (a map item's job too: ``job_item`` tells its item). Run ids never contain ``:``;
    node ids may, so the node id is what lies between."""
    if not value.startswith(JOB_ID_PREFIX):
        return None
    body = value[len(JOB_ID_PREFIX) :]
    if body.startswith("{"):  # a shard's tag (run ids have no braces)
        end = body.find("}:")
        if end < 2:
            return None
        body = body[end + 2 :]
    run_id, sep, rest = body.partition(":")
    parts = rest.rsplit(":", 2)
    if not run_id or not sep or len(parts) != 3 or not parts[0]:
        return None
    node_id, where, attempt = parts
    visit, _, item = where.partition(".")
    if not (_digits(visit) and _digits(attempt) and (not item or _digits(item))):
        return None
    return run_id, node_id, int(visit), int(attempt)


def job_item(value: str) -> int | None:
    """The item of a map item's ``job_id`` (None: a node's job, or not a job id)."""
    parts = value.rsplit(":", 2)
    if len(parts) != 3:
        return None
    _, _, item = parts[1].partition(".")
    return int(item) if _digits(item) else None


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def encode_arq_job(payload: JobPayload, enqueue_time_ms: int) -> bytes:
    """arq's job envelope (keys t, f, a, k, et) as orjson bytes."""
    return dumps(
        {
            "t": None,
            "f": ARQ_FUNCTION,
            "a": [payload.model_dump(mode="json", exclude_none=True)],
            "k": {},
            "et": enqueue_time_ms,
        }
    )


def decode_arq_job(raw: bytes) -> dict[str, Any]:
    """Inverse of ``encode_arq_job`` (used as arq's job deserializer)."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise MessageError("job", "expected a JSON object")
    return data


def parse_job_payload(data: Any) -> JobPayload:
    try:
        return JobPayload.model_validate(data)
    except ValidationError as e:
        raise MessageError("job", _explain(e)) from e
