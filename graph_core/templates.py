"""Template rendering: ``{{path}}`` and ``{{path | default(<json>)}}`` inside node configs.

A string that is exactly one placeholder (surrounding whitespace allowed) renders to the raw
resolved value, so ``"{{triage.output}}"`` stays a dict and ``"{{a.visits}}"`` an int. A
string with text around its placeholders is interpolated: strings go in as they are, every
other value as compact JSON (``true``, ``null``, ``{"a":1}``). ``render`` walks dicts (values,
never keys) and lists.

Every ``{{`` opens a placeholder; there is no escape. A template string is parsed once and
cached, and it is interpreted, never evaluated: the only filter is ``default(...)``, whose
argument is a JSON literal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import orjson

from graph_core.errors import PathError, TemplateError
from graph_core.paths import (
    KIND_OUTPUT,
    KIND_OUTPUTS,
    MISSING,
    ROOT_INPUT,
    DataSource,
    ParsedPath,
    parse_path,
    resolve,
    walk,
)

__all__ = ["has_templates", "render", "template_paths"]

OPEN: Final = "{{"
CLOSE: Final = "}}"
_DEFAULT = re.compile(r"\Adefault\s*\((?P<json>.*)\)\Z", re.DOTALL)
_DEFAULT_OPEN = re.compile(r"\|\s*default\s*\(")
_NO_DEFAULT: Final = b""  # orjson never encodes a value to b""


@dataclass(frozen=True, slots=True)
class _Placeholder:
    path: ParsedPath
    default_json: bytes  # the default as JSON, or _NO_DEFAULT

    @property
    def has_default(self) -> bool:
        return self.default_json != _NO_DEFAULT

    def default(self) -> Any:
        # Decoded per use, so a caller that mutates a rendered default cannot change the cache.
        return orjson.loads(self.default_json)


@dataclass(frozen=True, slots=True)
class _Compiled:
    parts: tuple[str | _Placeholder, ...]
    whole: _Placeholder | None  # set when the string is exactly one placeholder


def render(value: Any, source: DataSource) -> Any:
    """Render every template in ``value`` against ``source``.

    Dicts (values only) and lists are rendered recursively into new containers; other
    values are returned as they are. Raises ``TemplateError`` naming the path when a value
    is missing and the placeholder has no default, or when a placeholder is malformed.
    """
    if isinstance(value, str):
        return _render_str(value, source)
    if isinstance(value, dict):
        return {k: render(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, source) for v in value]
    return value


def template_paths(value: Any) -> Iterator[str]:
    """Every distinct path that ``render(value, ...)`` would read, in order of first use.

    Used to prefetch a run's data before rendering. Raises ``TemplateError`` for a
    malformed placeholder.
    """
    seen: set[str] = set()
    for ph in _placeholders(value):
        if ph.path.raw not in seen:
            seen.add(ph.path.raw)
            yield ph.path.raw


def has_templates(value: Any) -> bool:
    """True when any string in ``value`` contains a placeholder opener ``{{``."""
    if isinstance(value, str):
        return OPEN in value
    if isinstance(value, dict):
        return any(has_templates(v) for v in value.values())
    if isinstance(value, list):
        return any(has_templates(v) for v in value)
    return False


# --- rendering ----------------------------------------------------------------------------


def _render_str(template: str, source: DataSource) -> Any:
    if OPEN not in template:
        return template
    compiled = _compile(template)
    if compiled.whole is not None:
        return _lookup(compiled.whole, source, template)
    out: list[str] = []
    for part in compiled.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = _lookup(part, source, template)
        out.append(value if isinstance(value, str) else _to_json(value, part, template))
    return "".join(out)


def _lookup(ph: _Placeholder, source: DataSource, template: str) -> Any:
    value = resolve(ph.path, source)
    if value is not MISSING:
        return value
    if ph.has_default:
        return ph.default()
    raise TemplateError(ph.path.raw, _why_missing(ph.path, source), template)


def _to_json(value: Any, ph: _Placeholder, template: str) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as e:
        reason = f"value of type {type(value).__name__} cannot be written as JSON: {e}"
        raise TemplateError(ph.path.raw, reason, template) from e


def _why_missing(p: ParsedPath, source: DataSource) -> str:
    """Say which part of the path is absent (called only on the error path)."""
    hint = " and the placeholder has no default (add '| default(<json>)')"
    if p.kind == ROOT_INPUT:
        base, owner = source.run_input(), "the run input"
    elif p.kind == KIND_OUTPUT:
        base, owner = source.latest_output(p.root), f"the output of node {p.root!r}"
        if base is MISSING:
            return f"node {p.root!r} has no output yet" + hint
    elif p.kind == KIND_OUTPUTS:
        visit = p.visit or 1
        base, owner = source.output_at(p.root, visit), f"visit {visit} of node {p.root!r}"
        if base is MISSING:
            return f"node {p.root!r} has no output for visit {visit}" + hint
    else:
        return "no value at this path" + hint
    for i in range(len(p.rest)):
        if walk(base, p.rest[: i + 1]) is MISSING:
            return f"{owner} has no {'.'.join(p.rest[: i + 1])!r}" + hint
    return "no value at this path" + hint


# --- parsing ------------------------------------------------------------------------------


def _placeholders(value: Any) -> Iterator[_Placeholder]:
    if isinstance(value, str):
        if OPEN in value:
            yield from (p for p in _compile(value).parts if isinstance(p, _Placeholder))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _placeholders(v)
    elif isinstance(value, list):
        for v in value:
            yield from _placeholders(v)


@lru_cache(maxsize=4096)
def _compile(template: str) -> _Compiled:
    """Split ``template`` into literal text and placeholders; raise ``TemplateError``."""
    parts: list[str | _Placeholder] = []
    pos = 0
    while (start := template.find(OPEN, pos)) != -1:
        if start > pos:
            parts.append(template[pos:start])
        end = _find_close(template, start + len(OPEN))
        parts.append(_parse_placeholder(template[start + len(OPEN) : end], template))
        pos = end + len(CLOSE)
    if pos < len(template):
        parts.append(template[pos:])
    placeholders = [p for p in parts if isinstance(p, _Placeholder)]
    literal = "".join(p for p in parts if isinstance(p, str))
    whole = placeholders[0] if len(placeholders) == 1 and not literal.strip() else None
    return _Compiled(tuple(parts), whole)


def _find_close(template: str, inner_start: int) -> int:
    """Index of the ``}}`` that closes the placeholder whose text starts at ``inner_start``.

    A ``default(...)`` argument may itself contain ``}}`` (``default({"a":{}})``,
    ``default("}}")``), so the JSON argument is skipped over before looking for the close.
    """
    close = template.find(CLOSE, inner_start)
    if close == -1:
        text = template[inner_start:].strip()
        raise TemplateError(text, f"unclosed {OPEN!r}: no matching {CLOSE!r}", template)
    bar = template.find("|", inner_start, close)
    opener = _DEFAULT_OPEN.match(template, bar) if bar != -1 else None
    if opener is None:
        return close  # no filter, or one the parser will reject with a clear reason
    arg_end = _json_arg_end(template, opener.end())
    after = template.find(CLOSE, arg_end) if arg_end != -1 else -1
    return after if after != -1 else close


def _json_arg_end(text: str, pos: int) -> int:
    """Index of the ``)`` that ends a JSON argument starting at ``pos``; -1 if none."""
    depth, in_string, escaped = 0, False, False
    for i in range(pos, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == ")" and depth <= 0:
            return i
    return -1


def _parse_placeholder(inner: str, template: str) -> _Placeholder:
    expr = inner.strip()
    if not expr:
        raise TemplateError("", "empty placeholder: write {{node.output.field}}", template)
    path_text, bar, filter_text = expr.partition("|")
    path_text = path_text.strip()
    default_json = _NO_DEFAULT
    if bar:
        default_json = _parse_default(path_text, filter_text.strip(), template)
    if not path_text:
        raise TemplateError(expr, "a placeholder needs a path before '|'", template)
    try:
        path = parse_path(path_text)
    except PathError as e:
        raise TemplateError(path_text, e.reason, template) from e
    return _Placeholder(path, default_json)


def _parse_default(path_text: str, filter_text: str, template: str) -> bytes:
    match = _DEFAULT.match(filter_text)
    if match is None and filter_text.startswith("default"):
        reason = f"malformed {filter_text!r}: write default(<json literal>), ending in ')'"
        raise TemplateError(path_text, reason, template)
    if match is None:
        reason = f"unknown filter {filter_text!r}: the only filter is default(<json literal>)"
        raise TemplateError(path_text, reason, template)
    raw = match["json"].strip()
    if not raw:
        reason = 'default() needs a JSON literal such as "x", 0, null, [] or {}'
        raise TemplateError(path_text, reason, template)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        reason = f"default({raw}) is not a JSON literal (strings need double quotes): {e}"
        raise TemplateError(path_text, reason, template) from e
    return orjson.dumps(value)
