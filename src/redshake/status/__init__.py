"""Observability: counters, status HTTP server, logs, progress."""
