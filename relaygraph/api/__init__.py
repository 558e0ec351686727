"""The HTTP API: ``relaygraph api`` serves ``create_app`` with uvicorn (docs/api.md)."""

from __future__ import annotations

from relaygraph.api.app import create_app
from relaygraph.api.auth import ApiKeys, KeysError, Principal, Role, key_entry, new_key
from relaygraph.api.settings import ApiSettings

__all__ = [
    "ApiKeys",
    "ApiSettings",
    "KeysError",
    "Principal",
    "Role",
    "create_app",
    "key_entry",
    "new_key",
]
