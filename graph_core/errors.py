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
    """One thing wrong with a graph. ``where`` names the node, edge or field."""

    code: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.code}]"


class GraphValidationError(RelaygraphError):
    """A graph is malformed. Carries *every* problem found, not just the first."""

    def __init__(self, problems: list[Problem], graph_id: str | None = None) -> None:
        self.problems = list(problems)
        self.graph_id = graph_id
        head = f"graph {graph_id!r} is invalid" if graph_id else "graph is invalid"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head} ({len(self.problems)} problem(s)):\n{lines}")

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
