"""Notebook runs (papermill), batch sweeps (Dask) and schedules."""
