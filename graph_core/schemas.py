"""JSON Schemas on nodes (``input_schema``, ``output_schema``): checking a schema when a
graph is validated, and a value against it when a node runs. Pure: jsonschema only.

Validators are compiled once per schema object (a graph's schemas live as long as the
graph), so a check costs what the schema costs, not a compile per job.
"""

from __future__ import annotations

from typing import Any

__all__ = ["schema_problem", "violation"]

_COMPILED: dict[int, tuple[Any, Any]] = {}  # id(schema) -> (the schema, its validator)
_MAX_COMPILED = 4096


def _validator(schema: dict[str, Any]) -> Any:
    found = _COMPILED.get(id(schema))
    if found is not None and found[0] is schema:
        return found[1]
    from jsonschema.validators import validator_for  # only graphs with schemas load it

    cls = validator_for(schema)
    compiled = cls(schema)
    if len(_COMPILED) >= _MAX_COMPILED:
        _COMPILED.clear()
    _COMPILED[id(schema)] = (schema, compiled)
    return compiled


def schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not a valid JSON Schema, or None."""
    if not isinstance(schema, dict):
        return f"a schema is a JSON object, got {type(schema).__name__}"
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.path)
        return f"not a valid JSON Schema at {where}: {e.message}"
    return None


def violation(schema: dict[str, Any], value: Any) -> str | None:
    """Where and why ``value`` does not match ``schema`` (the first error by path), or None."""
    errors = sorted(_validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.path])
    if not errors:
        return None
    first = errors[0]
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.path)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.message}{more}"
