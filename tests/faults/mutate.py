"""Random and mutated wire data for the fuzz tests.

Everything is driven by a ``random.Random``, so hypothesis (``st.randoms()``) and the
seeded dispatcher fuzz share one engine: random JSON values, structure-aware mutations of
valid messages (drop, replace, add or rename a field, wrong types, boundary numbers, deep
nesting) and byte-level mutations of their encodings.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

__all__ = [
    "encode",
    "mutate_bytes",
    "mutate_value",
    "mutated_message",
    "random_bytes",
    "random_json",
]

_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    0.5,
    -0.0,
    1e308,
    float("inf"),
    float("nan"),
)
_STRINGS = (
    "",
    " ",
    "x" * 300,
    "é\u2028\U0001f600",
    "\x00",
    "{}",
    "a:b",
    "{run}",
    "..",
    "input",
    "start",
    "approve",
    "reject",
    "completed",
    "failed",
    "waiting",
    "retry",
    "wait_timeout",
    "run_timeout",
)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-like value (may hold NaN, infinities and huge ints)."""
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        kind = rng.randrange(5)
        if kind == 0:
            return None
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            return rng.choice(_NUMBERS) if rng.random() < 0.5 else rng.randint(-5, 5)
        if kind == 3:
            return rng.choice(_STRINGS)
        return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(8)))
    if roll < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(_STRINGS[:12]) + str(rng.randrange(3)): random_json(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


def _deep(rng: random.Random, leaf: Any) -> Any:
    """A deeply nested structure (lists, objects or conditions) around ``leaf``."""
    value = leaf
    style = rng.randrange(3)
    for _ in range(rng.choice((20, 100, 300))):  # json.dumps itself recurses: deeper in bytes
        if style == 0:
            value = [value]
        elif style == 1:
            value = {"a": value}
        else:
            value = {"type": "not", "conditions": [value]}
    return value


def mutate_value(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """``value`` (a JSON-like structure) with one random change somewhere inside it."""
    if isinstance(value, dict) and value and rng.random() < 0.55 and depth < 6:
        key = rng.choice(list(value))
        action = rng.randrange(6)
        out = dict(value)
        if action == 0:
            del out[key]
        elif action == 1:
            out[key] = random_json(rng)
        elif action == 2:
            out[rng.choice(_STRINGS) or "extra"] = random_json(rng)
        elif action == 3:
            out[key + rng.choice(("_", "s", " "))] = out.pop(key)
        elif action == 4:
            out[key] = _deep(rng, out[key])
        else:
            out[key] = mutate_value(rng, out[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.55 and depth < 6:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        action = rng.randrange(4)
        if action == 0:
            del out_list[i]
        elif action == 1:
            out_list.insert(i, copy.deepcopy(out_list[i]))  # a duplicate item (node, edge)
        elif action == 2:
            out_list[i] = random_json(rng)
        else:
            out_list[i] = mutate_value(rng, out_list[i], depth + 1)
        return out_list
    if isinstance(value, bool) or value is None:
        return random_json(rng)
    if isinstance(value, int | float):
        return rng.choice((*_NUMBERS, str(value), [value]))
    if isinstance(value, str):
        return rng.choice((*_STRINGS, value * 2, value[:-1], value.upper(), 7, None))
    return random_json(rng)


def mutated_message(rng: random.Random, base: Any) -> Any:
    """``base`` with one to three mutations."""
    value = copy.deepcopy(base)
    for _ in range(rng.randint(1, 3)):
        value = mutate_value(rng, value)
    return value


def plausible_message(
    rng: random.Random, base: dict[str, Any], pools: dict[str, list[Any]]
) -> dict[str, Any]:
    """``base`` with one to three fields set to other values of the right type (from
    ``pools``, by field name): messages that parse, and then meet the state machine."""
    value = dict(base)
    names = sorted(set(base) & set(pools)) or sorted(pools)
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(names)
        pool = pools[name]
        value[name] = rng.choice(pool) if pool else random_json(rng)
    return value


def encode(value: Any) -> bytes:
    """JSON bytes even for NaN, infinities and huge ints (which orjson refuses to write)."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    """``raw`` with bytes flipped, cut, duplicated or inserted."""
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        if not data:
            data.extend(random_bytes(rng))
            continue
        i = rng.randrange(len(data))
        action = rng.randrange(6)
        if action == 0:
            data[i] = rng.randrange(256)
        elif action == 1:
            del data[i:]
        elif action == 2:
            data[i:i] = data[: rng.randrange(len(data) + 1)]
        elif action == 3:
            data[i:i] = rng.choice((b'"', b"{", b"}", b"\\", b"\xff", b",", b"null", b"\x00"))
        elif action == 4:
            del data[i]
        else:  # nesting deeper than any parser's recursion limit
            depth = rng.choice((600, 1100, 5000))
            opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
            data[:] = opener * depth + bytes(data) + closer * depth
    return bytes(data)
