"""Fault tests: real dispatcher and worker processes killed, restarted, starved and fed garbage."""
