"""Stored runs: the SQLite store, background job managers (thread and Ray)."""
