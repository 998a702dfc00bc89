"""Run one piece of code on a fresh kernel session; ``exec_recorded`` also records it as an ``exec`` run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from dsagent.kernel_gateway.base import OutputHook
from dsagent.kernel_gateway.models import Execution
from dsagent.kernel_gateway.registry import get_backend
from dsagent.settings import Settings

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact, Run

__all__ = ["exec_code", "exec_recorded", "RecordedExec"]


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


@dataclass
class RecordedExec:
    """An ``exec`` run: the cell's result, its row in ``runs`` and the artifacts captured."""

    execution: Execution
    run: "Run"
    artifacts: list["Artifact"] = field(default_factory=list)


async def exec_recorded(
    code: str,
    *,
    backend: str | None = None,
    timeout: float | None = None,
    work_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    on_output: OutputHook | None = None,
    settings: Settings | None = None,
    title: str | None = None,
) -> RecordedExec:
    """Like ``exec_code``, and the cell is recorded as an ``exec`` run with its artifacts.

    Failed, timed-out or died cells end the run ``failed``; Ctrl-C/SIGTERM ``cancelled``.
    """
    from dsagent.artifacts.recorder import RunRecorder
    from dsagent.artifacts.store import Store

    settings = settings or Settings()
    with Store.open(settings=settings) as store:
        async with get_backend(backend, settings, pool_size=0) as kernels:
            params = {"code": code, "timeout": timeout}
            async with RunRecorder(store, "exec", title=title or _title(code), params=params, backend=kernels.name) as recorder:
                async with await kernels.start_session(work_dir=work_dir, env=env) as session:
                    await recorder.attach(session)
                    execution = await recorder.execute(code, timeout=timeout, on_output=on_output)
        assert recorder.run is not None
        return RecordedExec(execution, recorder.run, recorder.artifacts)


def _title(code: str) -> str:
    first = next((line.strip() for line in code.splitlines() if line.strip()), "")
    return first if len(first) <= 60 else first[:57] + "..."
