"""relaygraph's control plane: the run store, the dispatcher service and the client.

Users import these from ``relaygraph``; ``from dispatcher import WorkflowClient`` keeps working.

Public names are imported lazily, so ``import dispatcher`` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.client import WorkflowClient
    from dispatcher.service import Dispatcher
    from dispatcher.settings import DispatcherSettings
    from dispatcher.store import RunStore
    from dispatcher.sync_client import SyncWorkflowClient
    from dispatcher.views import RunSummary, RunView

__all__ = [
    "Dispatcher",
    "DispatcherSettings",
    "RunStore",
    "RunSummary",
    "RunView",
    "SyncWorkflowClient",
    "WorkflowClient",
]

_WHERE = {
    "Dispatcher": "dispatcher.service",
    "DispatcherSettings": "dispatcher.settings",
    "RunStore": "dispatcher.store",
    "RunSummary": "dispatcher.views",
    "RunView": "dispatcher.views",
    "SyncWorkflowClient": "dispatcher.sync_client",
    "WorkflowClient": "dispatcher.client",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dispatcher' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
