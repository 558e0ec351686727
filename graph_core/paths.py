"""Paths into a run's data: ``input.x``, ``node.output.x``, ``node.outputs.2.x``, ``node.visits``.

A path is parsed once (``parse_path``) and resolved against a ``DataSource``, a small
read-only view of a run. Resolution never raises for absent data: it returns ``MISSING``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Protocol

from graph_core.errors import PathError

__all__ = [
    "MISSING",
    "DataSource",
    "Missing",
    "ParsedPath",
    "parse_path",
    "resolve",
    "walk",
]


class Missing:
    """Sentinel type for a value that is not there (distinct from JSON ``null``)."""

    _instance: Missing | None = None

    def __new__(cls) -> Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = Missing()

ROOT_INPUT: Final = "input"
KIND_OUTPUT: Final = "output"
KIND_OUTPUTS: Final = "outputs"
KIND_VISITS: Final = "visits"


class DataSource(Protocol):
    """What path resolution needs from a run. Implementations may load lazily."""

    def run_input(self) -> Any: ...

    def latest_output(self, node_id: str) -> Any:
        """The output of the node's latest completed visit, or ``MISSING``."""
        ...

    def output_at(self, node_id: str, visit: int) -> Any:
        """The output of visit ``visit`` (1-based), or ``MISSING``."""
        ...

    def visit_count(self, node_id: str) -> int: ...


@dataclass(frozen=True, slots=True)
class ParsedPath:
    """A parsed path. ``root`` is ``input`` or a node id."""

    raw: str
    root: str
    kind: str  # "input" | "output" | "outputs" | "visits"
    visit: int | None
    rest: tuple[str, ...]

    @property
    def node_id(self) -> str | None:
        return None if self.kind == ROOT_INPUT else self.root


@lru_cache(maxsize=4096)
def parse_path(path: str) -> ParsedPath:
    """Parse ``path``; raise ``PathError`` naming what is wrong."""
    if not isinstance(path, str) or not path.strip():
        raise PathError(str(path), "a path is a non-empty string such as 'node.output.field'")
    parts = path.strip().split(".")
    if any(p == "" for p in parts):
        raise PathError(path, "empty segment (two dots in a row, or a leading/trailing dot)")
    root = parts[0]
    if root == ROOT_INPUT:
        return ParsedPath(path, root, ROOT_INPUT, None, tuple(parts[1:]))
    if len(parts) < 2:
        raise PathError(path, "a node path needs a second segment: 'output', 'outputs' or 'visits'")
    kind = parts[1]
    if kind == KIND_OUTPUT:
        return ParsedPath(path, root, kind, None, tuple(parts[2:]))
    if kind == KIND_VISITS:
        if len(parts) > 2:
            raise PathError(path, "'visits' is a number and has no fields")
        return ParsedPath(path, root, kind, None, ())
    if kind == KIND_OUTPUTS:
        if len(parts) < 3 or not parts[2].isdigit() or int(parts[2]) < 1:
            raise PathError(path, "'outputs' must be followed by a visit number >= 1")
        return ParsedPath(path, root, kind, int(parts[2]), tuple(parts[3:]))
    raise PathError(
        path, f"unknown segment {kind!r} after node {root!r} (use output, outputs.N or visits)"
    )


def walk(value: Any, rest: tuple[str, ...]) -> Any:
    """Follow ``rest`` into nested dicts/lists; ``MISSING`` where the way is absent."""
    for key in rest:
        if isinstance(value, dict):
            if key not in value:
                return MISSING
            value = value[key]
        elif isinstance(value, list) and _is_index(key):
            idx = int(key)
            if not -len(value) <= idx < len(value):
                return MISSING
            value = value[idx]
        else:
            return MISSING
    return value


def _is_index(key: str) -> bool:
    return key.isdigit() or (key.startswith("-") and key[1:].isdigit())


def resolve(path: str | ParsedPath, source: DataSource) -> Any:
    """Resolve ``path`` against ``source``; ``MISSING`` when any part is absent."""
    p = parse_path(path) if isinstance(path, str) else path
    if p.kind == ROOT_INPUT:
        return walk(source.run_input(), p.rest)
    if p.kind == KIND_VISITS:
        return source.visit_count(p.root)
    if p.kind == KIND_OUTPUT:
        base = source.latest_output(p.root)
    else:
        base = source.output_at(p.root, p.visit or 1)
    if base is MISSING:
        return MISSING
    return walk(base, p.rest)
