"""One interface to Jupyter kernels wherever they run: ``KernelBackend`` makes ``KernelSession``s."""

from dsagent.kernel_gateway.base import KernelBackend, KernelSession, OutputHook, run_hook
from dsagent.kernel_gateway.models import Execution, ExecutionError, ExecutionStatus, FileInfo, Output
from dsagent.kernel_gateway.registry import BackendRegistry, backend_registry, get_backend

__all__ = [
    "KernelBackend",
    "KernelSession",
    "OutputHook",
    "run_hook",
    "Execution",
    "ExecutionError",
    "ExecutionStatus",
    "FileInfo",
    "Output",
    "BackendRegistry",
    "get_backend",
    "backend_registry",
]
