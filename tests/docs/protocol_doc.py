"""Reading docs/protocol.md the way its tests need it: sections, fenced code blocks with the
marker comment in front of them (``<!-- walkthrough: ... -->``), and the field tables
(``<!-- fields: NAME -->``). The doc is the input of the tests, so it cannot drift from
the code they compare it with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DOC",
    "Block",
    "FieldRow",
    "blocks",
    "doc_text",
    "field_tables",
    "section",
    "table_after",
]

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_MARKER = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_HEADING = re.compile(r"^(#+)\s+(.*?)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block; ``marker`` is the comment on the line right before it."""

    marker: str | None
    lang: str
    text: str
    line: int  # 1-based line of the opening fence, in the text it was read from


@dataclass(frozen=True)
class FieldRow:
    """One row of a table: the names in backticks in its first cell (usually one) and
    every cell by its column's header."""

    names: tuple[str, ...]
    cells: dict[str, str]

    @property
    def name(self) -> str:
        if len(self.names) != 1:
            raise AssertionError(f"row {self.names} names more than one field")
        return self.names[0]


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The lines under the heading whose title is ``heading``, up to the next heading of the
    same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if m and m.group(2) == heading:
            level = len(m.group(1))
            end = len(lines)
            for j in range(i + 1, len(lines)):
                n = _HEADING.match(lines[j])
                if n and len(n.group(1)) <= level and not _in_fence(lines, j):
                    end = j
                    break
            return "\n".join(lines[i + 1 : end])
    raise AssertionError(f"docs/protocol.md has no heading {heading!r}")


def _in_fence(lines: list[str], index: int) -> bool:
    return sum(1 for line in lines[:index] if _FENCE.match(line)) % 2 == 1


def blocks(text: str) -> list[Block]:
    """Every fenced code block of ``text``, in order, with its marker (or None). An indented
    block (inside a list item) loses its indentation."""
    lines = text.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line)
            j += 1
        if j == len(lines):
            raise AssertionError(f"unclosed code block at line {i + 1}")
        found.append(Block(_marker_before(lines, i), lang, "\n".join(body), i + 1))
        i = j + 1
    return found


def _marker_before(lines: list[str], index: int) -> str | None:
    if index == 0:
        return None
    m = _MARKER.match(lines[index - 1])
    return m.group(1) if m else None


def table_after(text: str, marker: str) -> list[FieldRow]:
    """The markdown table right after the comment ``<!-- marker -->``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _MARKER.match(line)
        if m and m.group(1) == marker:
            return _table(lines, i + 1, marker)
    raise AssertionError(f"docs/protocol.md has no <!-- {marker} --> table")


def field_tables(text: str) -> dict[str, list[FieldRow]]:
    """Every ``<!-- fields: NAME -->`` table, by NAME."""
    tables: dict[str, list[FieldRow]] = {}
    for line in text.splitlines():
        m = _MARKER.match(line)
        if m and m.group(1).startswith("fields:"):
            name = m.group(1).removeprefix("fields:").strip()
            if name in tables:
                raise AssertionError(f"two field tables named {name!r}")
            tables[name] = table_after(text, m.group(1))
    return tables


def _cells(line: str) -> list[str]:
    # A cell may hold an escaped pipe (``\\|``); it does not split.
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def _table(lines: list[str], start: int, marker: str) -> list[FieldRow]:
    if start + 1 >= len(lines) or not lines[start].lstrip().startswith("|"):
        raise AssertionError(f"<!-- {marker} --> is not followed by a table")
    header = [h.strip("`") for h in _cells(lines[start])]
    rows: list[FieldRow] = []
    for line in lines[start + 2 :]:
        if not line.lstrip().startswith("|"):
            break
        cells = dict(zip(header, _cells(line), strict=True))
        names = tuple(re.findall(r"`([^`]+)`", cells[header[0]]))
        if not names:
            raise AssertionError(f"<!-- {marker} -->: {cells[header[0]]!r} names no field")
        rows.append(FieldRow(names, cells))
    return rows
