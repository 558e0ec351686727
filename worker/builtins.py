"""Built-in handlers: ``function``, ``condition``, ``switch``, ``log`` and ``noop``.

They follow roomkit-graph's built-in handlers where those exist (``function``, ``condition``,
``switch``), so a roomkit-graph graph means the same thing here. Differences are listed in
each handler's docstring. Every handler gets its config with templates already rendered.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from graph_core.conditions import Condition
from graph_core.errors import ConditionError
from graph_core.messages import dumps
from graph_core.model import Node
from worker.context import NodeContext, NonRetryableError
from worker.registry import HandlerRegistry, is_async_callable

__all__ = ["BUILTIN_TYPES", "condition_node", "install", "log_node", "noop_node", "switch_node"]

BUILTIN_TYPES = ("function", "condition", "switch", "log", "noop")

FUNCTION_ACTIONS = ("set_context", "json_transform", "custom", "delay")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def install(registry: HandlerRegistry) -> None:
    """Register every built-in handler on ``registry``."""
    registry.register("function", _function_node(registry))
    registry.register("condition", condition_node, reads=_condition_reads)
    registry.register("switch", switch_node, reads=_switch_reads)
    registry.register("log", log_node)
    registry.register("noop", noop_node)


# --- function ---------------------------------------------------------------------------------


def _function_node(registry: HandlerRegistry) -> Any:
    async def function_node(ctx: NodeContext) -> Any:
        """``function`` nodes: ``config.action`` picks what happens.

        * ``set_context``: output the (rendered) ``config.values`` object.
        * ``json_transform``: output the (rendered) ``config.template``, any JSON value.
        * ``custom``: call the function registered under ``config.function`` with the
          context and output what it returns (it may return a ``NodeResult``). Async
          functions are awaited, plain ones run in a thread.
        * ``delay``: output ``{"delayed": config.duration}`` and wait for nothing, as in
          roomkit-graph (a real delay belongs in a timer, not a worker slot).

        Differences from roomkit-graph: custom functions take one ``NodeContext`` (the
        config is ``ctx.config``) instead of ``(context, config)``; an unknown action or
        function, or ``set_context`` values that are not an object, fail the node without
        retries instead of returning a failed result.
        """
        config = ctx.config
        action = config.get("action", "")
        if action == "set_context":
            values = config.get("values", {})
            if not isinstance(values, dict):
                raise NonRetryableError(
                    f"function node {ctx.node_id!r}: set_context needs 'values' to be an "
                    f"object, got {type(values).__name__}"
                )
            return values
        if action == "json_transform":
            return config.get("template", {})
        if action == "delay":
            return {"delayed": config.get("duration", "0s")}
        if action == "custom":
            return await _call_custom(registry, ctx)
        raise NonRetryableError(
            f"function node {ctx.node_id!r}: unknown action {action!r} "
            f"(known: {', '.join(FUNCTION_ACTIONS)})"
        )

    return function_node


async def _call_custom(registry: HandlerRegistry, ctx: NodeContext) -> Any:
    name = ctx.config.get("function", "")
    fn = registry.get_function(name) if isinstance(name, str) else None
    if fn is None:
        known = ", ".join(registry.function_names()) or "none"
        raise NonRetryableError(
            f"function node {ctx.node_id!r}: no function {name!r} is registered "
            f"(registered: {known}); register it with @registry.function({name!r})"
        )
    if is_async_callable(fn):
        result = await fn(ctx)
    else:
        result = await asyncio.to_thread(fn, ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


# --- condition --------------------------------------------------------------------------------


async def condition_node(ctx: NodeContext) -> dict[str, bool]:
    """``condition`` nodes: evaluate ``config.condition`` (a condition object, as on edges)
    and output ``{"result": true|false}``; edges then branch on ``<id>.output.result``.

    The paths the condition reads are preloaded for it. Difference from roomkit-graph: a
    missing or malformed condition fails the node (roomkit-graph outputs ``false``).
    """
    data = ctx.config.get("condition")
    if not isinstance(data, dict):
        raise NonRetryableError(
            f"condition node {ctx.node_id!r} needs 'condition' to be a condition object "
            '(e.g. {"type": "field", "path": "input.x", "op": "eq", "value": 1})'
        )
    try:
        condition = Condition.from_dict(data)
    except ConditionError as e:
        raise NonRetryableError(f"condition node {ctx.node_id!r}: {e}") from e
    return {"result": condition.evaluate(ctx.source)}


def _condition_reads(node: Node) -> list[str]:
    data = node.config.get("condition")
    if not isinstance(data, dict):
        return []
    try:
        return list(Condition.from_dict(data).paths())
    except ConditionError:
        return []  # the handler reports it


# --- switch -----------------------------------------------------------------------------------


async def switch_node(ctx: NodeContext) -> dict[str, Any]:
    """``switch`` nodes: output ``{"value": v, "case": label}``.

    ``v`` is ``config.value`` (usually a template such as ``"{{triage.output.severity}}"``)
    or, as in roomkit-graph, the value at ``config.path``. ``label`` is ``config.cases[v]``
    or, when no case matches, ``config.default`` (null if absent). Case keys are JSON object
    keys, so a non-string value matches the key equal to its JSON text (``1`` matches
    ``"1"``, ``true`` matches ``"true"``). Edges branch on ``<id>.output.case`` (or on
    ``.value``, as with roomkit-graph, whose switch outputs only ``{"value": v}``).
    """
    config = ctx.config
    if "value" in config:
        value = config["value"]
    elif isinstance(config.get("path"), str) and config["path"]:
        value = ctx.get(config["path"])
    else:
        value = None
    cases = config.get("cases", {})
    if not isinstance(cases, dict):
        raise NonRetryableError(
            f"switch node {ctx.node_id!r} needs 'cases' to be an object mapping values to "
            f"labels, got {type(cases).__name__}"
        )
    key = value if isinstance(value, str) else dumps(value).decode()
    case = cases[key] if key in cases else config.get("default")
    return {"value": value, "case": case}


def _switch_reads(node: Node) -> list[str]:
    path = node.config.get("path")
    return [path] if isinstance(path, str) and path and "value" not in node.config else []


# --- log, noop --------------------------------------------------------------------------------


async def log_node(ctx: NodeContext) -> dict[str, Any]:
    """``log`` nodes: log ``config.message`` at ``config.level`` (debug, info, warning,
    error, critical; default info) on the node's logger and output ``{"message": m}``.
    A message that is not a string (a lone placeholder can render to any value) is logged
    as JSON and output as it is."""
    message = ctx.config.get("message", "")
    level_name = ctx.config.get("level", "info")
    level = _LEVELS.get(level_name.lower()) if isinstance(level_name, str) else None
    if level is None:
        raise NonRetryableError(
            f"log node {ctx.node_id!r}: unknown level {level_name!r} "
            f"(use one of {', '.join(sorted(set(_LEVELS) - {'warn'}))})"
        )
    text = message if isinstance(message, str) else dumps(message).decode()
    ctx.logger.log(level, "%s", text)
    return {"message": message}


async def noop_node(ctx: NodeContext) -> dict[str, Any]:
    """``noop`` nodes: do nothing and output ``{}`` (useful as a join point or placeholder)."""
    return {}
