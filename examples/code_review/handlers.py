"""Handlers for the code-review loop: deterministic stand-ins for review agents.

Each pass through ``detect -> suggest -> evaluate`` "fixes" up to two issues, so the quality
score rises every visit and the loop ends once it reaches ``input.quality_threshold``.
``detect``'s ``max_visits`` stops the loop if the threshold can never be reached.
"""

from __future__ import annotations

import re
from typing import Any

from relaygraph import HandlerRegistry, NodeContext, NonRetryableError

registry = HandlerRegistry()

FIXES_PER_PASS = 2
_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(([^)]*)\)\s*:", re.MULTILINE)


def _code(ctx: NodeContext) -> str:
    data = ctx.input if isinstance(ctx.input, dict) else {}
    code = data.get("code")
    if not isinstance(code, str) or not code.strip():
        raise NonRetryableError("the run input needs 'code': a string of Python source")
    return code


@registry.handler("extract_functions")
def extract_functions(ctx: NodeContext) -> dict[str, Any]:
    """Find the top-level functions and their parameters."""
    functions = [
        {"name": name, "params": [p.strip() for p in params.split(",") if p.strip()]}
        for name, params in _DEF.findall(_code(ctx))
    ]
    return {"functions": functions, "count": len(functions)}


@registry.handler("check_complexity")
def check_complexity(ctx: NodeContext) -> dict[str, Any]:
    """Lines per function, a crude complexity measure."""
    code = _code(ctx)
    starts = [m.start() for m in _DEF.finditer(code)] + [len(code)]
    lines = {}
    for (name, _), begin, end in zip(_DEF.findall(code), starts, starts[1:], strict=False):
        lines[name] = len([ln for ln in code[begin:end].splitlines() if ln.strip()])
    return {"lines": lines, "max_lines": max(lines.values(), default=0)}


def _all_issues(ctx: NodeContext) -> list[str]:
    functions = ctx.get("extract.output.functions", None)
    if functions is None:
        functions = []
    code = _code(ctx)
    issues = []
    for fn in functions:
        name = fn["name"]
        body = code.split(f"def {name}", 1)[1]
        if '"""' not in body.split("\ndef ", 1)[0]:
            issues.append(f"{name}: missing docstring")
        if re.search(r":\s*\n\s+pass\b", body.split("\ndef ", 1)[0]):
            issues.append(f"{name}: empty body")
        issues.extend(f"{name}: one-letter parameter {p!r}" for p in fn["params"] if len(p) == 1)
        if "->" not in code.split(f"def {name}", 1)[1].split(":", 1)[0]:
            issues.append(f"{name}: no return annotation")
    return issues


@registry.handler("detect_issues", reads=lambda node: ["extract"])
def detect_issues(ctx: NodeContext) -> dict[str, Any]:
    """The issues still open on this pass (earlier passes fixed some)."""
    issues = _all_issues(ctx)
    fixed = min(len(issues), FIXES_PER_PASS * (ctx.visit - 1))
    return {"issues": issues[fixed:], "total": len(issues), "fixed": fixed, "pass": ctx.visit}


@registry.handler("suggest_improvements")
def suggest_improvements(ctx: NodeContext) -> dict[str, Any]:
    """One suggestion per open issue; the next pass applies up to two of them."""
    detected = ctx.get("detect.output", {})
    issues = detected.get("issues", [])
    return {
        "suggestions": [f"fix {issue}" for issue in issues[:FIXES_PER_PASS]],
        "open_issues": len(issues),
        "total_issues": detected.get("total", len(issues)),
    }


@registry.handler("evaluate_quality")
def evaluate_quality(ctx: NodeContext) -> dict[str, Any]:
    """Score = share of issues fixed (100 when none are open); it rises every pass."""
    suggested = ctx.get("suggest.output", {})
    total = suggested.get("total_issues", 0)
    open_issues = suggested.get("open_issues", 0)
    score = 100 if total == 0 else round(100 * (total - open_issues) / total)
    threshold = ctx.get("input.quality_threshold", 75)
    return {
        "quality_score": score,
        "threshold": threshold,
        "passed": isinstance(threshold, int | float) and score >= threshold,
        "iteration": ctx.visit,
        "open_issues": open_issues,
    }
