"""``DictSource``: an in-memory ``DataSource`` for trying conditions and templates without Redis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from graph_core.paths import MISSING

__all__ = ["DictSource"]


class DictSource:
    """A run's data held in plain dicts.

    ``outputs`` maps a node id to the outputs of its completed visits, visit 1 first::

        src = DictSource({"title": "500 on checkout"}, {"triage": [{"severity": "low"}]})
        Condition.field("triage.output.severity").eq("low").evaluate(src)  # True
    """

    def __init__(
        self,
        input: Any = None,  # the run's input, as ``input.*`` paths see it
        outputs: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        self._input = input
        self._outputs: dict[str, list[Any]] = {k: list(v) for k, v in (outputs or {}).items()}

    def add_output(self, node_id: str, output: Any) -> None:
        """Record one more completed visit of ``node_id`` with this output."""
        self._outputs.setdefault(node_id, []).append(output)

    def run_input(self) -> Any:
        """The run's input."""
        return self._input

    def latest_output(self, node_id: str) -> Any:
        """The output of the node's latest visit, or ``MISSING`` if it never completed."""
        visits = self._outputs.get(node_id)
        return visits[-1] if visits else MISSING

    def output_at(self, node_id: str, visit: int) -> Any:
        """The output of visit ``visit`` (1-based), or ``MISSING``."""
        visits = self._outputs.get(node_id, [])
        return visits[visit - 1] if 1 <= visit <= len(visits) else MISSING

    def visit_count(self, node_id: str) -> int:
        """How many visits of the node completed."""
        return len(self._outputs.get(node_id, ()))

    def __repr__(self) -> str:
        return f"DictSource(input={self._input!r}, outputs={self._outputs!r})"
