"""relaygraph's test suite (a package, so ``tests.support`` is importable)."""
