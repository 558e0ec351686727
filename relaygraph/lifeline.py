"""Child processes that do not outlive the process that started them (Linux)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

__all__ = ["parent_death_hook"]

_PR_SET_PDEATHSIG = 1


def parent_death_hook(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent goes (the
    thread that started it, strictly); None on other systems."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook
