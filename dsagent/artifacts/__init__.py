"""Runs and artifacts in DuckDB: the store, output capture, run recording.

``from dsagent.artifacts import Store, RunRecorder, NewArtifact`` is the usual
start; see ``store.py`` and ``recorder.py``. Names load on first use, so
importing this package does not import DuckDB.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Artifact", "Capture", "Event", "GcReport", "NewArtifact", "Page", "Run", "RunRecorder", "Store", "Transaction", "export_run"]

_WHERE = {
    "Artifact": "models", "Event": "models", "GcReport": "models", "NewArtifact": "models", "Page": "models", "Run": "models",
    "Capture": "capture", "RunRecorder": "recorder", "Store": "store", "Transaction": "store", "export_run": "export",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"dsagent.artifacts.{_WHERE[name]}"), name)
