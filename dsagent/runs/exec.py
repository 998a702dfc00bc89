"""Run one piece of code on a fresh kernel session and return its ``Execution``."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from dsagent.kernel_gateway.base import OutputHook
from dsagent.kernel_gateway.models import Execution
from dsagent.kernel_gateway.registry import get_backend
from dsagent.settings import Settings

__all__ = ["exec_code"]


async def exec_code(
    code: str,
    *,
    backend: str | None = None,
    timeout: float | None = None,
    work_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    on_output: OutputHook | None = None,
    settings: Settings | None = None,
) -> Execution:
    """Start a session (no warm pool: this process runs one cell), execute, shut down."""
    settings = settings or Settings()
    async with get_backend(backend, settings, pool_size=0) as kernels:
        async with await kernels.start_session(work_dir=work_dir, env=env) as session:
            return await session.execute(code, timeout=timeout, on_output=on_output)
