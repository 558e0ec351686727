"""Handlers for the approval graph: a fake writer, reviser and publisher (no network).

The ``review`` node is a ``human`` node: the dispatcher pauses the run there until someone
approves or rejects it (``relaygraph approve``, ``WorkflowClient.approve``, or a message on
``<prefix>:approvals``). Its output is ``{"decision", "data", "actor"}``.
"""

from __future__ import annotations

import re
from typing import Any

from relaygraph import HandlerRegistry, NodeContext

registry = HandlerRegistry()


def _topic(ctx: NodeContext) -> str:
    data = ctx.input if isinstance(ctx.input, dict) else {}
    return str(data.get("topic") or "release notes")


@registry.handler("writer")
def writer(ctx: NodeContext) -> dict[str, Any]:
    topic = _topic(ctx)
    return {
        "title": f"What's new: {topic}",
        "body": f"A short post about {topic}.",
        "revision": 0,
    }


@registry.handler("reviser")
def reviser(ctx: NodeContext) -> dict[str, Any]:
    """Apply the reviewer's feedback (``data.feedback`` of the rejection) to the draft."""
    review = ctx.get("review.output", {})
    feedback = (review.get("data") or {}).get("feedback", "tighten it up")
    draft = ctx.get("draft.output", {})
    previous = ctx.get("revise.output", None) or draft  # this node's own latest visit
    revision = int(previous.get("revision", 0)) + 1
    return {
        "title": f"{draft.get('title', 'Untitled')} (rev {revision})",
        "body": f"{previous.get('body', '')} [revised: {feedback}]",
        "revision": revision,
    }


@registry.handler("publisher")
def publisher(ctx: NodeContext) -> dict[str, Any]:
    """Publish the latest revision (or the draft), where the approval data says."""
    post = ctx.get("revise.output", None) or ctx.get("draft.output", {})
    review = ctx.get("review.output", {})
    channel = (review.get("data") or {}).get("channel", "blog")
    slug = re.sub(r"[^a-z0-9]+", "-", str(post.get("title", "")).lower()).strip("-")
    return {
        "published": True,
        "title": post.get("title"),
        "revision": post.get("revision", 0),
        "channel": channel,
        "url": f"https://example.invalid/{channel}/{slug}",
        "approved_by": review.get("actor"),
    }
