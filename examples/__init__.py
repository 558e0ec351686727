"""Example graphs and handler modules from the docs; each one is run by tests/e2e."""
