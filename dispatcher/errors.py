"""Errors the client raises (all ``RelaygraphError``s, carrying the ids they are about)."""

from __future__ import annotations

from graph_core.errors import RelaygraphError

__all__ = [
    "InputError",
    "NodeNotWaiting",
    "RunExists",
    "RunNotFound",
    "RunStateError",
    "WaitTimeout",
]


class RunNotFound(RelaygraphError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} not found (never submitted, or expired)")


class RunExists(RelaygraphError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} already exists; pick another run id")


class RunStateError(RelaygraphError):
    """An operation the run's status does not allow (pausing a finished run, say)."""

    def __init__(self, run_id: str, status: str, operation: str, allowed: str) -> None:
        self.run_id = run_id
        self.status = status
        self.operation = operation
        super().__init__(f"cannot {operation} run {run_id!r}: it is {status} ({allowed})")


class NodeNotWaiting(RelaygraphError):
    """An approval was sent without a token for a node that is not waiting."""

    def __init__(self, run_id: str, node_id: str, status: str) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self.status = status
        super().__init__(
            f"node {node_id!r} of run {run_id!r} is not waiting for an approval (node {status})"
        )


class InputError(RelaygraphError):
    """A run input or approval data that cannot be sent (not JSON, or too large)."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")


class WaitTimeout(RelaygraphError, TimeoutError):
    """``wait`` gave up before the run finished."""

    def __init__(self, run_id: str, status: str, timeout: float) -> None:
        self.run_id = run_id
        self.status = status
        self.timeout = timeout
        super().__init__(f"run {run_id!r} is still {status} after waiting {timeout:g}s")
