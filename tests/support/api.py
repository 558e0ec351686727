"""The HTTP API in tests: a keys document with one key per role, an in-process app with its
lifespan, and clients that present a given key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from relaygraph.api import ApiKeys, ApiSettings, create_app, key_entry
from tests.support.layout import SHARDS

__all__ = ["KEYS", "ROLES", "as_key", "in_process_api", "keys_document"]

ROLES = ("viewer", "submitter", "approver", "admin")
# name -> (key, roles); alice and bob are approvers a node can name
KEYS: dict[str, tuple[str, list[str]]] = {
    **{role: (f"rg_test-{role}-key", [role]) for role in ROLES},
    "alice": ("rg_test-alice-key", ["approver"]),
    "bob": ("rg_test-bob-key", ["approver"]),
}


def keys_document() -> bytes:
    entries = [key_entry(name, roles, key) for name, (key, roles) in KEYS.items()]
    return orjson.dumps({"keys": entries})


@contextlib.asynccontextmanager
async def in_process_api(
    redis_url: str, *, keys: bool = True, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` on the app (its lifespan running); pass ``headers=`` per
    request, or use ``as_key``."""
    doc = keys_document().decode() if keys else None
    settings.setdefault("shards", SHARDS)
    api_settings = ApiSettings(redis_url=redis_url, api_keys=doc, **settings)
    app = create_app(api_settings, ApiKeys.load(doc, None))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


def as_key(name: str | None) -> dict[str, str]:
    """The headers that present key ``name`` (None: no key; an unknown name: a wrong key)."""
    if name is None:
        return {}
    key = KEYS[name][0] if name in KEYS else "rg_not-a-key"
    return {"Authorization": f"Bearer {key}"}
