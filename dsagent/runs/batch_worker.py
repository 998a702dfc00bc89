"""The Dask worker's side of a batch sweep: one warm kernel pool per worker, one child notebook per task.

``KernelPoolPlugin`` (a Dask ``WorkerPlugin``) opens one kernel backend per
worker process, with a warm pool as large as the worker's thread count, and
closes it (no kernel left) when the plugin is removed or the worker stops.
``run_child`` is the task: it writes the notebook the caller sent into a
scratch folder, runs it with ``execute_notebook_run`` on the pool (the kernel
in the notebook's own folder when this worker sees it, else in a fresh one
with the files the caller shipped: ``batch_files.py``), records
everything into a ``RunJournal`` (workers never open the workspace's DuckDB
file) and returns the journal's entries for the caller to store.

Cancelling: ``cancel_batch(token)``, sent to every worker with
``client.run``, cancels that batch's running children; each one's recorder
ends its run ``cancelled`` (partial notebook kept) and its kernel is shut down
before the task returns.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["ChildSpec", "ChildResult", "KernelPoolPlugin", "run_child", "cancel_batch", "PLUGIN_PREFIX"]

log = logging.getLogger(__name__)

PLUGIN_PREFIX = "dsagent-kernels"
_RUNNING: dict[str, set["asyncio.Task[Any]"]] = {}  # batch token -> its children running in this worker
_CLOSING: set["asyncio.Task[Any]"] = set()  # pools being closed (strong references: the loop keeps weak ones)


@dataclass(frozen=True)
class ChildSpec:
    """What a worker needs to run one child: the notebook's bytes (the worker may be another machine)."""

    run_id: int
    token: str  # the batch's id for cancelling
    plugin: str  # name of the KernelPoolPlugin that holds this batch's backend
    notebook_name: str
    notebook: bytes
    parameters: dict[str, Any]
    timeout: float | None = None
    attempt: int = 1
    folder: str | None = None  # the notebook's folder, the kernel's cwd when this worker sees it (batch_files.py)
    files: dict[str, bytes] = field(default_factory=dict)  # otherwise: its referenced sibling files, by relative path
    allow_unknown: bool = False  # parameters the notebook does not declare are injected (checked by the caller)


@dataclass
class ChildResult:
    """A finished attempt: the journal to apply, its final status and error, where it ran."""

    run_id: int
    entries: list[Any]
    status: str
    error: str | None = None
    worker: str | None = None
    attempt: int = 1
    warnings: list[str] = field(default_factory=list)


class KernelPoolPlugin(WorkerPlugin):
    """One backend (warm pool) per worker for the sweeps of one backend/kernel; see the module docstring."""

    def __init__(self, name: str, backend: str | None, kernel_name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.backend_name = backend
        self.kernel_name = kernel_name
        self.overrides = settings  # plain values: the worker's own DSAGENT_* environment fills the rest
        self.backend: Any = None
        self.settings: Any = None

    async def setup(self, worker: Any) -> None:
        from dsagent.runs.notebook_cells import make_backend
        from dsagent.settings import Settings

        self.settings = Settings(**self.overrides)
        pool = max(1, int(getattr(worker.state, "nthreads", 1)))
        self.backend = make_backend(self.backend_name, self.settings, self.kernel_name, pool_size=pool)
        warm = getattr(self.backend, "warm", None)
        if warm is not None:  # start the pool now, not at the first task
            asyncio.ensure_future(warm())

    async def teardown(self, worker: Any) -> None:
        """Stop the pool's kernels. Not awaited to the end: a replacement kernel still starting would hold the
        caller's ``unregister`` for as long as a kernel start takes (seconds on a busy machine); it is stopped as
        soon as it is up, and a worker that exits kills what is left (``local``'s atexit hook)."""
        if self.backend is not None:
            closing = asyncio.ensure_future(self.backend.aclose())
            _CLOSING.add(closing)
            closing.add_done_callback(_CLOSING.discard)
            self.backend = None
            await asyncio.wait({closing}, timeout=1.0)


async def run_child(spec: ChildSpec) -> ChildResult:
    """Run one child notebook on this worker's pool; its journal entries (the task Dask runs)."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(spec.plugin)
    if plugin is None or plugin.backend is None:
        raise RuntimeError(f"the worker {worker.address} has no dsagent kernel pool {spec.plugin!r} (was the batch cancelled?)")
    task = asyncio.ensure_future(_execute(spec, plugin.backend, plugin.settings))
    running = _RUNNING.setdefault(spec.token, set())
    running.add(task)
    try:
        result = await asyncio.shield(task)
    finally:
        running.discard(task)
        if not running:
            _RUNNING.pop(spec.token, None)
    result.worker = worker.address
    return result


async def _execute(spec: ChildSpec, backend: Any, settings: Any) -> ChildResult:
    from dsagent.artifacts.journal import RunJournal
    from dsagent.runs.notebook_run import execute_notebook_run

    journal = RunJournal(spec.run_id, settings)
    scratch = Path(tempfile.mkdtemp(prefix=f"dsagent-child-{spec.run_id}-"))
    try:
        notebook = scratch / spec.notebook_name
        notebook.write_bytes(spec.notebook)
        work = _work_dir(spec, scratch)
        try:
            outcome = await execute_notebook_run(
                notebook, spec.parameters, backend=backend, output_path=scratch / "executed.ipynb", cwd=work,
                timeout=spec.timeout, settings=settings, store=journal,  # type: ignore[arg-type]
                recorder_options={"run_id": spec.run_id}, autosave=False,  # the notebook comes back in the journal
                allow_unknown_parameters=spec.allow_unknown,
            )
        except asyncio.CancelledError:
            return ChildResult(spec.run_id, journal.entries, "cancelled", "cancelled with its batch", attempt=spec.attempt)
        except Exception as exc:  # bad input or broken infrastructure: the attempt failed, the batch goes on
            error = f"{type(exc).__name__}: {exc}"
            return ChildResult(spec.run_id, journal.entries, "failed", error, attempt=spec.attempt)
        run = outcome.run
        return ChildResult(spec.run_id, journal.entries, run.status, run.error, attempt=spec.attempt, warnings=outcome.warnings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _work_dir(spec: ChildSpec, scratch: Path) -> Path:
    """The notebook's own folder, as for ``dsagent run``, if this worker sees it; else a fresh one with the shipped files."""
    if spec.folder and Path(spec.folder).is_dir():
        return Path(spec.folder)
    work = scratch / "work"
    work.mkdir()
    for relative, data in spec.files.items():
        target = (work / relative).resolve()
        if target.is_relative_to(work.resolve()):  # batch_files made these names; never outside the work dir
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return work


async def cancel_batch(token: str) -> int:
    """Cancel this worker's running children of batch ``token`` and wait until their kernels are down; how many."""
    tasks = list(_RUNNING.get(token, ()))
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    return len(tasks)
