"""Edge selection and retry arithmetic: small pure functions the transition function uses."""

from __future__ import annotations

import hashlib

from graph_core.model import Node, RetryPolicy
from graph_core.paths import DataSource
from graph_core.topology import EdgeRef

__all__ = ["backoff_delay", "is_retryable", "join_need", "select_edges"]


def select_edges(node: Node, out_edges: list[EdgeRef], source: DataSource) -> set[int]:
    """Indices of the edges that fire after ``node`` completes.

    Conditional edges are tried in definition order and the first match wins. When none
    matched, the default fires: the node's ``otherwise`` edge or its unconditional edge (as in
    roomkit-graph, where an unconditional edge beside conditional ones is the fallback).
    With ``fan_out`` every matching conditional edge and every unconditional edge fires, and
    ``otherwise`` only when no conditional edge matched.
    """
    chosen: set[int] = set()
    defaults: list[int] = []
    for ref in out_edges:
        cond = ref.edge.condition
        if cond is None:
            if node.fan_out:
                chosen.add(ref.index)
            else:
                defaults.append(ref.index)
        elif cond.is_otherwise:
            defaults.append(ref.index)
        elif cond.evaluate(source):
            chosen.add(ref.index)
            if not node.fan_out:
                return chosen
    matched_conditional = any(
        ref.index in chosen and ref.edge.condition is not None for ref in out_edges
    )
    if not matched_conditional and defaults:
        chosen.add(defaults[0])
    return chosen


def join_need(spec: str | int, inputs: int) -> int:
    """How many taken branches a join waits for (capped by the number of inputs)."""
    if spec == "any":
        return 1
    if spec == "all":
        return inputs
    return max(1, min(int(spec), inputs))


def is_retryable(policy: RetryPolicy, error_type: str, error_retryable: bool) -> bool:
    if not error_retryable or error_type in policy.no_retry_on:
        return False
    return policy.retry_on is None or error_type in policy.retry_on


def backoff_delay(policy: RetryPolicy, failed_attempt: int, seed: str) -> float:
    """Delay before attempt ``failed_attempt + 1``. Jitter is derived from ``seed`` so the
    transition stays deterministic (same inputs, same delay)."""
    if policy.backoff == "fixed":
        base = policy.initial_delay_s
    else:
        base = policy.initial_delay_s * (2 ** (failed_attempt - 1))
    base = min(base, policy.max_delay_s)
    if policy.jitter > 0 and base > 0:
        digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
        fraction = int.from_bytes(digest, "big") / 2**64  # in [0, 1)
        base = base * (1 - policy.jitter * fraction)
    return base
