"""The code_review example (see README.md)."""
