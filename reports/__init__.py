"""HTML rendering of stored results (reads results, never runs workloads)."""
