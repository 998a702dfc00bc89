"""Runs and artifacts in DuckDB: the store and output capture."""
