"""relaygraph: run workflow graphs, written as plain JSON, across processes on Redis.

This package is the public surface: import everything a user needs from here::

    from relaygraph import Graph, Node, Edge, Condition, HandlerRegistry, NodeContext
    from relaygraph import WorkflowClient, SyncWorkflowClient, validate

It also holds the front end that drives the engine's three parts: the ``relaygraph`` command
line (``relaygraph.cli``, also ``python -m relaygraph``), the embedded server that ``run`` starts
when no Redis URL is given (``relaygraph.embedded``), and the worker processes that ``run`` and
``up`` supervise (``relaygraph.procs``). The engine lives beside it: ``graph_core`` (the pure
semantics), ``dispatcher`` (the control plane) and ``worker`` (the execution side). None of
them imports this package.

Names are imported lazily, so ``import relaygraph`` in a handler module, or the command line's
start-up, loads Redis and arq only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.client import WorkflowClient, load_graph
    from dispatcher.errors import (
        InputError,
        NodeNotWaiting,
        RunExists,
        RunNotFound,
        RunStateError,
        WaitTimeout,
    )
    from dispatcher.store import GraphNotFound
    from dispatcher.sync_client import SyncWorkflowClient
    from dispatcher.views import NodeView, RunSummary, RunView, WaitView
    from graph_core.conditions import Condition
    from graph_core.errors import (
        GraphValidationError,
        Problem,
        RelaygraphError,
    )
    from graph_core.errors import GraphValidationError as ValidationError
    from graph_core.export import to_dot, to_mermaid
    from graph_core.memory import LocalResult, run_local
    from graph_core.model import Edge, Graph, Node, RetryPolicy, Trigger, WaitPolicy
    from graph_core.status import NodeStatus, RunStatus
    from graph_core.validation import validate
    from relaygraph.embedded import EmbeddedServer
    from worker.context import NodeContext, NodeResult, NonRetryableError
    from worker.registry import HandlerRegistry, RegistryError, RegistryLoadError

__all__ = [
    "Condition",
    "Edge",
    "EmbeddedServer",
    "Graph",
    "GraphNotFound",
    "GraphValidationError",
    "HandlerRegistry",
    "InputError",
    "LocalResult",
    "Node",
    "NodeContext",
    "NodeNotWaiting",
    "NodeResult",
    "NodeStatus",
    "NodeView",
    "NonRetryableError",
    "Problem",
    "RegistryError",
    "RegistryLoadError",
    "RelaygraphError",
    "RetryPolicy",
    "RunExists",
    "RunNotFound",
    "RunStateError",
    "RunStatus",
    "RunSummary",
    "RunView",
    "SyncWorkflowClient",
    "Trigger",
    "ValidationError",
    "WaitPolicy",
    "WaitTimeout",
    "WaitView",
    "WorkflowClient",
    "__version__",
    "load_graph",
    "run_local",
    "to_dot",
    "to_mermaid",
    "validate",
]

# name -> (module, attribute in it)
_WHERE: dict[str, tuple[str, str]] = {
    # graphs: the model, the condition DSL, validation and drawing (graph_core, pure)
    "Graph": ("graph_core.model", "Graph"),
    "Node": ("graph_core.model", "Node"),
    "Edge": ("graph_core.model", "Edge"),
    "RetryPolicy": ("graph_core.model", "RetryPolicy"),
    "WaitPolicy": ("graph_core.model", "WaitPolicy"),
    "Trigger": ("graph_core.model", "Trigger"),
    "Condition": ("graph_core.conditions", "Condition"),
    "validate": ("graph_core.validation", "validate"),
    "Problem": ("graph_core.errors", "Problem"),
    "to_mermaid": ("graph_core.export", "to_mermaid"),
    "to_dot": ("graph_core.export", "to_dot"),
    "run_local": ("graph_core.memory", "run_local"),
    "LocalResult": ("graph_core.memory", "LocalResult"),
    "RunStatus": ("graph_core.status", "RunStatus"),
    "NodeStatus": ("graph_core.status", "NodeStatus"),
    # handlers (worker)
    "HandlerRegistry": ("worker.registry", "HandlerRegistry"),
    "NodeContext": ("worker.context", "NodeContext"),
    "NodeResult": ("worker.context", "NodeResult"),
    "NonRetryableError": ("worker.context", "NonRetryableError"),
    # submitting and following runs (dispatcher)
    "WorkflowClient": ("dispatcher.client", "WorkflowClient"),
    "SyncWorkflowClient": ("dispatcher.sync_client", "SyncWorkflowClient"),
    "load_graph": ("dispatcher.client", "load_graph"),
    "RunView": ("dispatcher.views", "RunView"),
    "NodeView": ("dispatcher.views", "NodeView"),
    "WaitView": ("dispatcher.views", "WaitView"),
    "RunSummary": ("dispatcher.views", "RunSummary"),
    # the embedded server (this package)
    "EmbeddedServer": ("relaygraph.embedded", "EmbeddedServer"),
    # errors: one root, RelaygraphError
    "RelaygraphError": ("graph_core.errors", "RelaygraphError"),
    "ValidationError": ("graph_core.errors", "GraphValidationError"),
    "GraphValidationError": ("graph_core.errors", "GraphValidationError"),
    "RegistryError": ("worker.registry", "RegistryError"),
    "RegistryLoadError": ("worker.registry", "RegistryLoadError"),
    "GraphNotFound": ("dispatcher.store", "GraphNotFound"),
    "RunNotFound": ("dispatcher.errors", "RunNotFound"),
    "RunExists": ("dispatcher.errors", "RunExists"),
    "RunStateError": ("dispatcher.errors", "RunStateError"),
    "NodeNotWaiting": ("dispatcher.errors", "NodeNotWaiting"),
    "InputError": ("dispatcher.errors", "InputError"),
    "WaitTimeout": ("dispatcher.errors", "WaitTimeout"),
}


def _version() -> str:
    try:
        return metadata.version("relaygraph")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+unknown"


__version__: str = _version()


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'relaygraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
