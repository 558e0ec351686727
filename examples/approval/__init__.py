"""The approval example (see README.md)."""
