"""The error hierarchy: one root, structured subclasses that carry their fields."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConditionError",
    "GraphValidationError",
    "MessageError",
    "PathError",
    "Problem",
    "RelaygraphError",
    "TemplateError",
]


class RelaygraphError(Exception):
    """Root of every error relaygraph raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a graph, as data.

    ``code`` is a stable snake_case name (``graph_core.validation.PROBLEM_CODES`` lists them),
    ``path`` says where (``nodes[3].retry.max_attempts``, ``edges[2].condition.op``, or
    ``graph`` / a top-level field for whole-graph problems) and ``message`` says, in plain
    words, what was found and what is allowed.
    """

    code: str
    path: str
    message: str

    @property
    def where(self) -> str:
        """The old name of ``path``, kept so that older callers keep working."""
        return self.path

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.code}]"


class GraphValidationError(RelaygraphError):
    """A graph is malformed. ``problems`` lists *every* problem found, not just the first."""

    def __init__(self, problems: list[Problem], graph_id: str | None = None) -> None:
        self.problems = list(problems)
        self.graph_id = graph_id
        head = f"graph {graph_id!r} is invalid" if graph_id else "graph is invalid"
        lines = "".join(f"\n  {p}" for p in self.problems)
        super().__init__(f"{head} ({len(self.problems)} problem(s)):{lines}")

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.problems]


class PathError(RelaygraphError):
    """A path such as ``triage.output.severity`` is malformed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"bad path {path!r}: {reason}")


class ConditionError(RelaygraphError):
    """A condition is malformed (unknown type or op, missing fields)."""

    def __init__(self, message: str, where: str = "condition") -> None:
        self.where = where
        super().__init__(f"{where}: {message}")


class TemplateError(RelaygraphError):
    """A template placeholder could not be resolved."""

    def __init__(self, path: str, reason: str, template: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.template = template
        where = f" in template {template!r}" if template is not None else ""
        super().__init__(f"cannot resolve {{{{{path}}}}}{where}: {reason}")


class MessageError(RelaygraphError):
    """A wire message (inbox entry, approval, job payload) is malformed."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"malformed {kind} message: {reason}")
