"""relaygraph's pure core: the graph model and JSON format, validation, the condition DSL,
templates, export, wire messages, Redis key schema, and the transition function.

Nothing here does I/O: no Redis, no arq, no asyncio (a test enforces it).
"""

from __future__ import annotations

from graph_core.conditions import Condition, PathRef
from graph_core.engine import Env, advance
from graph_core.errors import (
    ConditionError,
    GraphValidationError,
    MessageError,
    PathError,
    Problem,
    RelaygraphError,
    TemplateError,
)
from graph_core.events import (
    ApprovalReceived,
    CancelRequested,
    ErrorInfo,
    NodeReported,
    RunSubmitted,
    TimerFired,
)
from graph_core.export import condition_label, to_dot, to_mermaid
from graph_core.keys import Keys, RunKeys
from graph_core.memory import MemoryRun, run_local
from graph_core.model import Edge, Graph, Node, RetryPolicy, Trigger, WaitPolicy
from graph_core.sources import DictSource
from graph_core.state import NodeRecord, RunRecord, StateView, Transition
from graph_core.status import TERMINAL_RUN, NodeStatus, RunStatus
from graph_core.templates import render
from graph_core.validation import PROBLEM_CODES, validate, validate_graph

__all__ = [
    "PROBLEM_CODES",
    "TERMINAL_RUN",
    "ApprovalReceived",
    "CancelRequested",
    "Condition",
    "ConditionError",
    "DictSource",
    "Edge",
    "Env",
    "ErrorInfo",
    "Graph",
    "GraphValidationError",
    "Keys",
    "MemoryRun",
    "MessageError",
    "Node",
    "NodeRecord",
    "NodeReported",
    "NodeStatus",
    "PathError",
    "PathRef",
    "Problem",
    "RelaygraphError",
    "RetryPolicy",
    "RunKeys",
    "RunRecord",
    "RunStatus",
    "RunSubmitted",
    "StateView",
    "TemplateError",
    "TimerFired",
    "Transition",
    "Trigger",
    "WaitPolicy",
    "advance",
    "condition_label",
    "render",
    "run_local",
    "to_dot",
    "to_mermaid",
    "validate",
    "validate_graph",
]
