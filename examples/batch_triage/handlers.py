"""Handlers for the batch triage (no network): a fake issue tracker and a keyword classifier.

``fetch_issues`` returns the run input's ``issues``, or ``count`` made-up ones.
``classify`` gives each issue a severity from words in its title; ``label`` files the
others; ``summarize`` counts what the batch came to.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from relaygraph import HandlerRegistry, NodeContext

registry = HandlerRegistry()

_TITLES = (
    "checkout returns 500 for every user",
    "typo on the pricing page",
    "login is down in eu-west",
    "dark mode colours are off",
    "exports time out on large accounts",
    "button misaligned on mobile",
)
_WORDS = {"down": "critical", "500": "critical", "time out": "high", "crash": "high"}


@registry.handler("fetch_issues")
def fetch_issues(ctx: NodeContext) -> dict[str, Any]:
    given = ctx.input.get("issues") if isinstance(ctx.input, dict) else None
    if given is not None:
        return {"issues": given}
    count = int(ctx.input.get("count", 6)) if isinstance(ctx.input, dict) else 6
    issues = [{"number": 100 + i, "title": _TITLES[i % len(_TITLES)]} for i in range(count)]
    return {"issues": issues}


@registry.handler("classify")
def classify(ctx: NodeContext) -> dict[str, Any]:
    title = str(ctx.input.get("title", "")).lower()
    severity = next((s for word, s in _WORDS.items() if word in title), "low")
    return {"severity": severity}


@registry.handler("label")
def label(ctx: NodeContext) -> dict[str, Any]:
    return {"labels": [f"severity:{ctx.config['severity']}"]}


@registry.handler("summarize")
def summarize(ctx: NodeContext) -> dict[str, Any]:
    results = [r for r in ctx.config["results"] if r is not None]
    return {
        "issues": len(ctx.config["results"]),
        "decisions": dict(Counter(r["decision"] for r in results)),
        "severities": dict(Counter(r["severity"] for r in results)),
    }
