"""Helpers for tests that are not fixtures. Fixtures live in ``tests/conftest.py``."""

from tests.support.waiting import wait_for, wait_until_sync

__all__ = ["wait_for", "wait_until_sync"]
