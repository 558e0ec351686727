"""``HandlerRegistry``: which function runs each node type, and the named functions of the
built-in ``function`` node.

::

    registry = HandlerRegistry()  # built-ins included

    @registry.handler("agent")
    async def agent(ctx: NodeContext) -> dict[str, Any]:
        return {"summary": ...}

    @registry.function("slugify")  # {"type": "function", "config": {"action": "custom",
    def slugify(ctx: NodeContext) -> str:  #   "function": "slugify", ...}}
        return ctx.config["text"].lower().replace(" ", "-")

Handlers take one ``NodeContext``; they may be ``async`` (awaited on the worker's loop) or
plain functions (run in a thread so they cannot block the loop).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from graph_core.errors import RelaygraphError
from graph_core.model import CONTROL_TYPES, Node
from worker.context import NodeContext

__all__ = [
    "Handler",
    "HandlerRegistry",
    "HandlerSpec",
    "ReadsFn",
    "RegistryError",
    "RegistryLoadError",
    "is_async_callable",
    "load_registry",
]

Handler = Callable[[NodeContext], Any] | Callable[[NodeContext], Awaitable[Any]]
ReadsFn = Callable[[Node], Iterable[str]]
"""Given a node (config not yet rendered), the paths or node ids its handler will read."""

H = TypeVar("H", bound=Callable[..., Any])


class RegistryError(RelaygraphError):
    """A handler or function cannot be registered (control type, duplicate, not callable)."""

    def __init__(self, kind: str, name: str, reason: str) -> None:
        self.kind = kind  # "handler" or "function"
        self.name = name
        self.reason = reason
        super().__init__(f"cannot register {kind} {name!r}: {reason}")


class RegistryLoadError(RelaygraphError):
    """``load_registry`` could not produce a registry from a module path."""

    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(f"cannot load handlers from {spec!r}: {reason}")


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, partials of them, and objects with ``async __call__``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    )


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler: the function, whether to await it, and what it reads."""

    type: str
    fn: Handler
    is_async: bool
    reads: ReadsFn | None = None


class HandlerRegistry:
    """Maps node types to handlers, and names to the functions of ``function`` nodes."""

    def __init__(self, *, builtins: bool = True) -> None:
        self._handlers: dict[str, HandlerSpec] = {}
        self._functions: dict[str, Callable[[NodeContext], Any]] = {}
        if builtins:
            from worker.builtins import install

            install(self)

    # --- handlers ---------------------------------------------------------------------

    def handler(
        self, node_type: str, *, replace: bool = False, reads: ReadsFn | None = None
    ) -> Callable[[H], H]:
        """Decorator: ``@registry.handler("agent")`` registers the function for that type.

        ``reads``, if given, names paths (or node ids) beyond the usual ones that the worker
        should preload for ``ctx.get``.
        """

        def decorate(fn: H) -> H:
            self.register(node_type, fn, replace=replace, reads=reads)
            return fn

        return decorate

    def register(
        self,
        node_type: str,
        fn: Handler,
        *,
        replace: bool = False,
        reads: ReadsFn | None = None,
    ) -> None:
        """Register ``fn`` for ``node_type``; a second registration raises unless ``replace``."""
        if not isinstance(node_type, str) or not node_type.strip():
            raise RegistryError("handler", str(node_type), "a node type is a non-empty string")
        if node_type in CONTROL_TYPES:
            raise RegistryError(
                "handler",
                node_type,
                f"{node_type!r} is a control node type that the dispatcher runs itself "
                f"(control types: {', '.join(sorted(CONTROL_TYPES))})",
            )
        if not callable(fn):
            raise RegistryError("handler", node_type, f"{fn!r} is not callable")
        if node_type in self._handlers and not replace:
            raise RegistryError(
                "handler",
                node_type,
                f"a handler is already registered ({_name(self._handlers[node_type].fn)}); "
                "pass replace=True to override it",
            )
        self._handlers[node_type] = HandlerSpec(node_type, fn, is_async_callable(fn), reads)

    def get(self, node_type: str) -> Handler | None:
        """The handler registered for ``node_type``, or None."""
        spec = self._handlers.get(node_type)
        return spec.fn if spec is not None else None

    def spec(self, node_type: str) -> HandlerSpec | None:
        """The full registration for ``node_type`` (what the worker uses), or None."""
        return self._handlers.get(node_type)

    def types(self) -> list[str]:
        """The registered node types, sorted."""
        return sorted(self._handlers)

    def __contains__(self, node_type: object) -> bool:
        return node_type in self._handlers

    # --- named functions (the built-in ``function`` node, action "custom") --------------

    def function(self, name: str, *, replace: bool = False) -> Callable[[H], H]:
        """Decorator: register a named function for ``{"action": "custom", "function": name}``."""

        def decorate(fn: H) -> H:
            self.register_function(name, fn, replace=replace)
            return fn

        return decorate

    def register_function(
        self, name: str, fn: Callable[[NodeContext], Any], *, replace: bool = False
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise RegistryError("function", str(name), "a function name is a non-empty string")
        if not callable(fn):
            raise RegistryError("function", name, f"{fn!r} is not callable")
        if name in self._functions and not replace:
            raise RegistryError(
                "function",
                name,
                f"a function is already registered ({_name(self._functions[name])}); "
                "pass replace=True to override it",
            )
        self._functions[name] = fn

    def get_function(self, name: str) -> Callable[[NodeContext], Any] | None:
        return self._functions.get(name)

    def function_names(self) -> list[str]:
        return sorted(self._functions)

    def __repr__(self) -> str:
        return f"HandlerRegistry(types={self.types()}, functions={self.function_names()})"


def _name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}" if module else qualname


def load_registry(spec: str) -> HandlerRegistry:
    """Import ``"pkg.module"`` (attribute ``registry``) or ``"pkg.module:attr"`` and return
    that ``HandlerRegistry``. Raises ``RegistryLoadError`` saying what went wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise RegistryLoadError(str(spec), "expected 'pkg.module' or 'pkg.module:attr'")
    module_name, _, attr = spec.strip().partition(":")
    attr = attr or "registry"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise RegistryLoadError(spec, f"{module_name!r} is not a module path")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise RegistryLoadError(spec, f"module {module_name!r} not found") from e
        raise RegistryLoadError(spec, f"importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise RegistryLoadError(
            spec, f"importing {module_name!r} failed: {type(e).__name__}: {e}"
        ) from e
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise RegistryLoadError(spec, f"module {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    if not isinstance(value, HandlerRegistry):
        raise RegistryLoadError(
            spec,
            f"{module_name}:{attr} is a {type(value).__name__}, not a HandlerRegistry "
            "(create one with `registry = HandlerRegistry()`)",
        )
    return value
