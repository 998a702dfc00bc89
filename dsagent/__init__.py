"""dsagent: a notebook-driven data-science agent environment.

The public API is listed in ``__all__`` and imported lazily, so that
``import dsagent`` (and ``dsagent --help``) stays fast: jupyter, panel and
langgraph load only when something that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Settings": "dsagent.settings",
    "SETTINGS": "dsagent.settings",
    "Workspace": "dsagent.workspace",
    "DsagentError": "dsagent.errors",
    "KernelDied": "dsagent.errors",
    "ExecutionTimeout": "dsagent.errors",
    "BackendNotFound": "dsagent.errors",
    "KernelStartFailed": "dsagent.errors",
    "CellExecutionError": "dsagent.errors",
    "KernelBackend": "dsagent.kernel_gateway.base",
    "KernelSession": "dsagent.kernel_gateway.base",
    "Execution": "dsagent.kernel_gateway.models",
    "ExecutionError": "dsagent.kernel_gateway.models",
    "FileInfo": "dsagent.kernel_gateway.models",
    "get_backend": "dsagent.kernel_gateway.registry",
    "run_notebook": "dsagent.runs.notebook_run",
    "ask": "dsagent.graphs.runner",
    "run_batch": "dsagent.runs.batch",
    "record": "dsagent.runs.record",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dsagent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
