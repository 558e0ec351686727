"""relaygraph's data plane: the handler API and registry, built-in handlers, the arq worker.

Public names are imported lazily, so ``import worker`` in a handler module stays light (arq
is loaded only by ``build_workers`` / ``serve``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.app import build_workers, serve
    from worker.context import NodeContext, NodeResult, NonRetryableError, NotPreloaded
    from worker.preload import GraphCache
    from worker.registry import (
        HandlerRegistry,
        RegistryError,
        RegistryLoadError,
        load_registry,
    )
    from worker.runner import run_node
    from worker.settings import WorkerSettings

__all__ = [
    "GraphCache",
    "HandlerRegistry",
    "NodeContext",
    "NodeResult",
    "NonRetryableError",
    "NotPreloaded",
    "RegistryError",
    "RegistryLoadError",
    "WorkerSettings",
    "build_workers",
    "load_registry",
    "run_node",
    "serve",
]

_WHERE = {
    "GraphCache": "worker.preload",
    "HandlerRegistry": "worker.registry",
    "NodeContext": "worker.context",
    "NodeResult": "worker.context",
    "NonRetryableError": "worker.context",
    "NotPreloaded": "worker.context",
    "RegistryError": "worker.registry",
    "RegistryLoadError": "worker.registry",
    "WorkerSettings": "worker.settings",
    "build_workers": "worker.app",
    "load_registry": "worker.registry",
    "run_node": "worker.runner",
    "serve": "worker.app",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
