"""Handlers for the bug-triage graph: deterministic stand-ins for real agents (no network).

Run it::

    relaygraph run examples/bug_triage/graph.json --handlers examples.bug_triage.handlers \\
        --input '{"title": "Checkout returns 500", "body": "production is down for all users"}'
"""

from __future__ import annotations

import re
from typing import Any

from relaygraph import HandlerRegistry, NodeContext, NonRetryableError

registry = HandlerRegistry()

# Phrases that make a report critical, and the labels other words suggest.
CRITICAL = ("production down", "production is down", "outage", "data loss", "500", "security")
LABELS = {
    "checkout": "payments",
    "payment": "payments",
    "login": "auth",
    "password": "auth",
    "typo": "docs",
    "docs": "docs",
    "slow": "performance",
}
TEAMS = {"payments": "team-payments", "auth": "team-identity", "docs": "team-docs"}


def _report_text(ctx: NodeContext) -> tuple[str, str]:
    report = ctx.input if isinstance(ctx.input, dict) else {}
    title = str(report.get("title", "")).strip()
    body = str(report.get("body", "")).strip()
    if not title and not body:
        raise NonRetryableError("the run input needs a 'title' or a 'body'")
    return title, body


def _labels(text: str) -> list[str]:
    words = set(re.findall(r"[a-z]+", text))
    return sorted({label for word, label in LABELS.items() if word in words})


def triage_agent(ctx: NodeContext) -> dict[str, Any]:
    """Classify a bug report: severity, labels and a one-line summary."""
    title, body = _report_text(ctx)
    text = f"{title} {body}".lower()
    hits = [phrase for phrase in CRITICAL if phrase in text]
    severity = "critical" if hits else ("minor" if "typo" in text else "normal")
    return {
        "severity": severity,
        "labels": _labels(text),
        "reasons": hits,
        "summary": f"[{severity}] {title or body[:60]}",
    }


def labeler_agent(ctx: NodeContext) -> dict[str, Any]:
    """Pick a team for a non-critical bug from the triage labels."""
    triage = ctx.get("triage.output", {})
    labels = triage.get("labels", [])
    team = next((TEAMS[label] for label in labels if label in TEAMS), "team-triage")
    return {
        "severity": triage.get("severity"),
        "assignee": team,
        "labels": labels,
        "summary": triage.get("summary"),
    }


AGENTS = {"triage-agent": triage_agent, "labeler-agent": labeler_agent}


@registry.handler("agent")
def agent(ctx: NodeContext) -> dict[str, Any]:
    """``agent`` nodes: ``config.agent_id`` picks the (fake) agent."""
    agent_id = ctx.config.get("agent_id")
    fn = AGENTS.get(str(agent_id))
    if fn is None:
        raise NonRetryableError(f"unknown agent_id {agent_id!r} (known: {sorted(AGENTS)})")
    return fn(ctx)


@registry.handler("notification")
async def notification(ctx: NodeContext) -> dict[str, Any]:
    """Pretend to post ``config.text`` to ``config.channel`` (records what it would send)."""
    channel = ctx.config.get("channel", "slack")
    text = ctx.config.get("text", "")
    ctx.logger.info("notify %s: %s", channel, text)
    return {
        "severity": ctx.get("triage.output.severity"),
        "notified": channel,
        "text": text,
        "message_id": f"msg-{ctx.idempotency_key}",  # stable across retries of this visit
    }
