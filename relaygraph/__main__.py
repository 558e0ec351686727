"""``python -m relaygraph``: the same as the ``relaygraph`` command."""

from __future__ import annotations

import sys

from relaygraph.cli import main

if __name__ == "__main__":
    sys.exit(main())
