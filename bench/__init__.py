"""Benchmarks of relaygraph against its peers (raw arq, Celery, LoopGraph): ``python -m bench``.

Not part of the test suite: it prints figures and ratios and writes ``bench/results.json``;
``docs/performance.md`` shows one full run and where the time goes.
"""

__all__: list[str] = []
