"""API keys with roles.

A keys document is JSON, from a file (``--keys FILE``) or ``RELAYGRAPH_API_KEYS``::

    {"keys": [{"name": "alice", "roles": ["approver"], "sha256": "<hex digest of the key>"}]}

Only the SHA-256 digest of a key is kept (``relaygraph api-key`` makes a key and prints its
entry): keys are 256-bit random tokens, so a plain digest cannot be reversed by guessing.
A presented key is hashed and compared with every stored digest in constant time.

Roles grow one from the other: ``viewer`` reads; ``submitter`` also registers graphs,
submits and cancels runs; ``approver`` also approves and rejects; ``admin`` may do
everything. A human node's ``config.approvers`` (key names or role names) narrows who may
decide it further.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Final

import orjson

from graph_core.errors import RelaygraphError

__all__ = [
    "ANONYMOUS",
    "ApiKeys",
    "KeysError",
    "Principal",
    "Role",
    "hash_key",
    "key_entry",
    "new_key",
]

KEY_PREFIX: Final = "rg_"
_NAME = re.compile(r"^[A-Za-z0-9_.@\-]{1,64}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class Role(IntEnum):
    """Each role may do what the ones below it may."""

    VIEWER = 1
    SUBMITTER = 2
    APPROVER = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            known = ", ".join(r.label for r in cls)
            raise KeysError(f"unknown role {text!r} (known: {known})") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name (the actor in a run's history) and its roles."""

    name: str
    roles: frozenset[Role]

    @property
    def level(self) -> Role:
        return max(self.roles)

    def may(self, role: Role) -> bool:
        return self.level >= role

    def matches(self, approvers: list[str]) -> bool:
        """Whether ``approvers`` (key names and role names) admits this caller: its name is
        listed, or a listed role is one this caller has (roles include the lower ones)."""
        for entry in approvers:
            role = Role.__members__.get(entry.upper())
            if role is not None:  # a role name is a role, even if a key has that name
                if self.may(role):
                    return True
            elif entry == self.name:
                return True
        return False


ANONYMOUS: Final = Principal("anonymous", frozenset({Role.ADMIN}))


class KeysError(RelaygraphError):
    """A keys document that cannot be used, naming what is wrong."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_entry(name: str, roles: list[str], key: str) -> dict[str, Any]:
    """The keys-document entry of ``key`` (its digest, never the key)."""
    _check_name(name, "name")
    return {"name": name, "roles": [Role.parse(r).label for r in roles], "sha256": hash_key(key)}


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    digest: bytes
    principal: Principal


class ApiKeys:
    """The configured keys; empty means the API runs without keys."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = entries

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    @classmethod
    def none(cls) -> ApiKeys:
        return cls([])

    @classmethod
    def parse(cls, text: str | bytes, source: str) -> ApiKeys:
        """The keys of a document; ``KeysError`` naming ``source`` and the bad entry."""
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise KeysError(f"{source}: not JSON ({e})") from e
        raw = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(raw, list):
            raise KeysError(f'{source}: expected {{"keys": [...]}}')
        entries: list[_Entry] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            where = f"{source}: keys[{i}]"
            entries.append(_entry(item, where))
            if entries[-1].name in seen:
                raise KeysError(f"{where}: name {entries[-1].name!r} is used twice")
            seen.add(entries[-1].name)
        return cls(entries)

    @classmethod
    def load(cls, text: str | None, path: str | None) -> ApiKeys:
        """Keys from the document ``text`` and/or the file at ``path`` (both: merged)."""
        keys = cls.none()
        if path is not None:
            try:
                raw = Path(path).read_bytes()
            except OSError as e:
                raise KeysError(f"keys file {path}: {e.strerror or e}") from e
            keys = cls.parse(raw, f"keys file {path}")
        if text is not None:
            more = cls.parse(text, "RELAYGRAPH_API_KEYS")
            clash = set(keys.names) & set(more.names)
            if clash:
                raise KeysError(f"key name(s) {', '.join(sorted(clash))} defined twice")
            keys = cls(keys._entries + more._entries)
        return keys

    def authenticate(self, presented: str) -> Principal | None:
        """The principal of ``presented``, or None. Every digest is compared, in constant
        time, whether or not an earlier one matched."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry.principal
        return found


def _entry(item: Any, where: str) -> _Entry:
    if not isinstance(item, dict):
        raise KeysError(f"{where}: expected an object with name, roles and sha256")
    unknown = set(item) - {"name", "roles", "sha256"}
    if "key" in item:
        raise KeysError(
            f"{where}: plain keys are not kept at rest; store its digest as sha256 "
            "(relaygraph api-key prints the entry)"
        )
    if unknown:
        raise KeysError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = _check_name(item.get("name"), f"{where}.name")
    roles = item.get("roles")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise KeysError(f"{where}.roles: expected a non-empty list of role names")
    try:
        parsed = frozenset(Role.parse(r) for r in roles)
    except KeysError as e:
        raise KeysError(f"{where}.roles: {e}") from None
    digest = item.get("sha256")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise KeysError(f"{where}.sha256: expected 64 lowercase hex digits")
    return _Entry(name, bytes.fromhex(digest), Principal(name, parsed))


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise KeysError(f"{where}: {name!r} is not a key name (1-64 letters, digits, _.@-)")
    return name
