"""The bug_triage example (see README.md)."""
