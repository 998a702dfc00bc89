"""``run_notebook``: execute a parameterized notebook as a recorded ``notebook`` run.

One run: the notebook is checked (``notebook_input.py``), a run is created,
its cells execute through the ``dsagent`` papermill engine's cell loop on a
session of any backend, every cell's outputs and files become artifacts, the
executed notebook (with papermill's metadata and error cell) is stored as an
artifact of kind ``notebook`` and written where asked. A failing cell makes a
``failed`` run (the notebook is still stored); Ctrl-C/SIGTERM a ``cancelled``
one with the partial notebook; ``sys.exit(0)`` ends the notebook early, as
papermill does, and the run succeeds.

A caller that keeps a backend open (dashboard, scheduler, batch) passes it as
``backend=`` and each run takes a warm kernel from its pool::

    async with get_backend("local", pool_size=2) as kernels:
        run = await run_notebook("report.ipynb", {"alpha": 0.5}, backend=kernels)
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TextIO

from dsagent.kernel_gateway.base import KernelBackend, KernelSession
from dsagent.kernel_gateway.models import Execution
from dsagent.runs.notebook_cells import LOCAL_FS_BACKENDS, CellHooks, execute_cells, make_backend, notebook_kernel_name
from dsagent.runs.notebook_input import PreparedNotebook, check_output_path, peek_notebook, prepare_notebook
from dsagent.settings import Settings
from dsagent.workspace import Workspace

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact, Run
    from dsagent.artifacts.recorder import RunRecorder
    from dsagent.artifacts.store import Store
    from dsagent.secrets import Scrubber

__all__ = ["run_notebook", "execute_notebook_run", "NotebookOutcome", "CellFailure", "CellProgress", "NOTEBOOK_MIME"]

NOTEBOOK_MIME = "application/x-ipynb+json"


@dataclass(frozen=True)
class CellProgress:
    """One step of a run for progress displays: a cell started (``execution`` None) or finished."""

    index: int  # position in the executed notebook (the injected-parameters cell included)
    total: int
    source: str
    execution: Execution | None = None


@dataclass(frozen=True)
class CellFailure:
    """The cell that stopped the notebook and why (``kind``: error, timeout, died)."""

    index: int
    execution_count: int | None
    ename: str
    evalue: str
    kind: str

    def describe(self) -> str:
        """One line for people; cells count from 1 there, as in papermill's log (``index`` is 0-based)."""
        count = f" (In [{self.execution_count}])" if self.execution_count is not None else ""
        what = {"died": "kernel died", "timeout": "timed out"}.get(self.kind, "raised")
        return f"cell {self.index + 1}{count} {what}: {self.ename}: {self.evalue}"


@dataclass
class NotebookOutcome:
    """What a notebook run produced: the run row, where the notebook went, the failing cell if any."""

    run: "Run"
    notebook_path: Path
    failure: CellFailure | None = None
    artifacts: list["Artifact"] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


async def run_notebook(
    path: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    backend: str | KernelBackend | None = None,
    output_path: str | Path | None = None,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    kernel_name: str | None = None,
    settings: Settings | None = None,
    store: "Store | None" = None,
    allow_unknown_parameters: bool = False,
) -> "Run":
    """Run a notebook with ``parameters`` as a recorded ``notebook`` run and return the finished run.

    ``backend``: a name (a session with no warm pool) or an open backend (a
    warm kernel from its pool). ``timeout``: seconds per cell (default: the
    ``execution_timeout`` setting). ``cwd``: the kernel's work dir (default:
    the notebook's folder on local backends, a fresh folder elsewhere). A
    failing cell gives a ``failed`` run, not an exception; bad input raises
    ``NotebookError`` before any run exists. ``store``: an open store to
    record into (a long-lived caller saves opening one per run). A parameter name the notebook does
    not declare raises ``NotebookError`` (did you mean ...) unless ``allow_unknown_parameters``.
    """
    outcome = await execute_notebook_run(
        path, parameters, backend=backend, output_path=output_path, timeout=timeout, cwd=cwd, kernel_name=kernel_name,
        settings=settings, store=store, allow_unknown_parameters=allow_unknown_parameters,
    )
    return outcome.run


async def execute_notebook_run(
    path: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    text_parameters: Mapping[str, str] | None = None,
    raw_parameters: Mapping[str, str] | None = None,
    backend: str | KernelBackend | None = None,
    output_path: str | Path | None = None,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    kernel_name: str | None = None,
    settings: Settings | None = None,
    store: "Store | None" = None,
    progress_bar: bool = False,
    on_cell: Callable[[CellProgress], None] | None = None,
    on_run: Callable[["Run", Path], None] | None = None,
    log_output: bool = False,
    stdout_file: TextIO | None = None,
    stderr_file: TextIO | None = None,
    recorder_options: Mapping[str, Any] | None = None,
    autosave: bool = True,
    allow_unknown_parameters: bool = False,
) -> NotebookOutcome:
    """``run_notebook`` with everything the CLI needs: text parameters, progress hooks, the outcome.

    ``recorder_options``: passed to the run's ``RunRecorder`` (``schedule_id`` of a scheduled
    firing; ``run_id`` of a batch child created beforehand, recorded into a ``RunJournal`` store).
    ``autosave=False``: no partial notebook file while cells run (papermill writes the whole
    notebook before and after every cell); the executed or partial notebook is still written
    and stored at the end. A batch child's worker keeps no file anyway.
    """
    settings = settings or Settings()
    path = Path(path)
    output = check_output_path(output_path)
    kernel = notebook_kernel_name(peek_notebook(path), kernel_name, path=str(path))
    owned = not isinstance(backend, KernelBackend)
    kernels = make_backend(backend, settings, kernel, pool_size=0) if not isinstance(backend, KernelBackend) else backend
    work_dir = Path(cwd) if cwd is not None else (path.resolve().parent if kernels.name in LOCAL_FS_BACKENDS else None)
    # the kernel starts while papermill loads and the store opens: a cold run pays for one, not three
    session_task = asyncio.ensure_future(kernels.start_session(work_dir=work_dir))
    own_store = store is None
    try:
        prepared, store = await asyncio.gather(
            asyncio.to_thread(prepare_notebook, path, kernel, parameters, text_parameters, raw_parameters, allow_unknown_parameters),
            asyncio.to_thread(_open_store, settings) if store is None else _given(store),
        )
    except BaseException:
        await _discard_session(session_task)
        if owned:
            await kernels.aclose()
        raise
    watched = work_dir if kernels.name in LOCAL_FS_BACKENDS else None
    runner = _NotebookRunner(
        path, prepared, store, kernels, output, watched, timeout, progress_bar, on_cell, log_output, stdout_file, stderr_file
    )
    runner.recorder_options = dict(recorder_options or {})
    runner.autosave = autosave
    try:
        return await runner.run(session_task, on_run)
    finally:
        # a long-lived caller gets the result without waiting for the kernel to exit (~0.2-1 s);
        # if its loop ends first, the cancelled shutdown kills the kernel
        await _discard_session(session_task, background=not owned)
        if own_store:
            store.close()
        if owned:
            await kernels.aclose()


def _open_store(settings: Settings) -> "Store":
    from dsagent.artifacts.store import Store
    from dsagent.secrets import Scrubber

    store = Store(settings=settings)
    store.setup()
    return store


async def _given(store: "Store") -> "Store":
    return store


_SHUTTING_DOWN: set["asyncio.Task[None]"] = set()  # strong references: the loop keeps only weak ones


async def _discard_session(task: "asyncio.Future[KernelSession]", *, background: bool = False) -> None:
    """Stop a session that is starting or started (shielded: it must not outlive a cancelled run)."""
    if not task.done():
        task.cancel()
    try:
        session = await asyncio.shield(task)
    except BaseException:
        return
    shutdown = asyncio.ensure_future(session.shutdown())
    if background:
        _SHUTTING_DOWN.add(shutdown)
        shutdown.add_done_callback(_SHUTTING_DOWN.discard)
        return
    await asyncio.shield(shutdown)


class _NotebookRunner:
    """Executes one prepared notebook inside a ``RunRecorder``; the steps of ``execute_notebook_run``."""

    def __init__(
        self, path: Path, prepared: PreparedNotebook, store: "Store", kernels: KernelBackend, output: Path | None, watched: Path | None, timeout: float | None,
        progress_bar: bool, on_cell: Callable[[CellProgress], None] | None, log_output: bool, stdout_file: TextIO | None, stderr_file: TextIO | None,
    ) -> None:
        self.path, self.prepared, self.store, self.kernels, self.output = path, prepared, store, kernels, output
        self.watched = watched  # the local work dir, whose changed files become artifacts
        self.timeout, self.progress_bar, self.on_cell = timeout, progress_bar, on_cell
        self.log_output, self.stdout_file, self.stderr_file = log_output, stdout_file, stderr_file
        self.recorder: "RunRecorder | None" = None
        self.recorder_options: dict[str, Any] = {}
        self.autosave = True
        self.target: Path | None = None  # where the executed notebook goes

    async def run(self, session_task: "asyncio.Future[KernelSession]", on_run: Callable[["Run", Path], None] | None) -> NotebookOutcome:
        from dsagent.artifacts.recorder import RunRecorder

        params = {k: _jsonable(v) for k, v in self.prepared.parameters.items()}
        async with RunRecorder(self.store, "notebook", title=self.path.name, params=params, backend=self.kernels.name,
                               **self.recorder_options) as recorder:
            self.recorder = recorder
            target = self.target = self.output or self._workspace_copy(recorder.run_id)
            if on_run is not None:
                on_run(recorder.run, target)  # type: ignore[arg-type]
            nb_man = self._manager(self._autosave_path(target, recorder.run_id) if self.autosave else None, recorder.scrubber)
            session = await asyncio.shield(session_task)
            try:
                await recorder.attach(session)
                failure = await self._execute(nb_man, session)
            finally:
                await self._store_notebook(nb_man, target)
                _remove_capture_folder(session, recorder.capture.folder if recorder.capture else None)
            if failure is None:
                await recorder.finish("succeeded")
            else:
                await recorder.finish("failed", error=failure.describe())
        assert recorder.run is not None
        return NotebookOutcome(recorder.run, target, failure, recorder.artifacts, self.prepared.warnings)

    def _workspace_copy(self, run_id: int) -> Path:
        folder = Workspace.from_settings(self.store.settings).outputs_dir / "notebooks"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{self.path.stem}-run{run_id}.ipynb"

    def _autosave_path(self, target: Path, run_id: int) -> Path:
        """Where partial notebooks go while cells run: not in the watched work dir (they would be captured as files)."""
        if self.watched is not None and target.is_relative_to(self.watched.resolve()):
            return self._workspace_copy(run_id)
        return target

    def _manager(self, target: Path | None, scrubber: "Scrubber") -> Any:
        manager = _scrubbing_manager()(self.prepared.nb, output_path=str(target) if target else None, log_output=self.log_output,
                                       progress_bar=self.progress_bar)
        manager.scrubber = scrubber
        return manager

    async def _execute(self, nb_man: Any, session: KernelSession) -> CellFailure | None:
        """Papermill's ``Engine.execute_notebook`` steps around the shared cell loop; returns the failing cell."""
        from papermill.exceptions import PapermillExecutionError
        from papermill.execute import raise_for_execution_errors

        failed: list[tuple[int, Execution]] = []
        hooks = CellHooks(started=self._started, finished=lambda i, cell, ex: self._finished(i, ex, failed))
        nb_man.notebook_start()
        try:
            await execute_cells(
                nb_man, session, timeout=self.timeout, log_output=self.log_output, stdout_file=self.stdout_file, stderr_file=self.stderr_file, hooks=hooks
            )
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        try:
            raise_for_execution_errors(nb_man.nb, nb_man.output_path or str(self.target))  # adds papermill's error cells
        except PapermillExecutionError as err:
            index, execution = failed[-1] if failed else (err.cell_index, None)
            kind = execution.status if execution is not None else "error"
            count = execution.execution_count if execution is not None else err.exec_count
            return CellFailure(index, count, err.ename, err.evalue, kind)
        return None

    async def _started(self, index: int, cell: Any) -> None:
        assert self.recorder is not None
        await self.recorder.cell_started(index, cell.source)
        if self.on_cell is not None:
            self.on_cell(CellProgress(index, len(self.prepared.nb.cells), cell.source))

    async def _finished(self, index: int, execution: Execution, failed: list[tuple[int, Execution]]) -> None:
        assert self.recorder is not None
        await self.recorder.record_cell(index, execution)
        if not execution.ok:
            failed.append((index, execution))
        if self.on_cell is not None:
            self.on_cell(CellProgress(index, len(self.prepared.nb.cells), execution.code, execution))

    async def _store_notebook(self, nb_man: Any, target: Path) -> None:
        """Write the executed (or partial) notebook and store it as the run's ``notebook`` artifact."""
        from dsagent.artifacts.models import NewArtifact

        assert self.recorder is not None
        data = notebook_bytes(nb_man.nb, self.recorder.scrubber)
        for path in {target, Path(nb_man.output_path or target)}:
            await asyncio.shield(asyncio.to_thread(path.write_bytes, data))
        item = NewArtifact(target.name, "notebook", NOTEBOOK_MIME, data, metadata={"path": str(target), "source": str(self.path)})
        await self.recorder.add_artifacts([item])


def notebook_bytes(nb: Any, scrubber: "Scrubber") -> bytes:
    """The notebook as the file to keep: secrets its outputs or parameters hold are redacted."""
    from nbformat.v4.nbjson import writes  # nbformat.writes without its validation: see below

    # nbformat.writes validates first and only logs what it finds; the notebook was validated when papermill
    # read it and since then got papermill's metadata and outputs built by nbformat, so the check found nothing
    # and cost every run (a sweep's children: each worker's first write compiled the schema, ~0.15 s of CPU)
    return scrubber.data(writes(nb).encode("utf-8"))


@functools.cache
def _scrubbing_manager() -> type:
    """Papermill's execution manager whose saves (the autosaves while cells run) redact secrets too."""
    from papermill.engines import NotebookExecutionManager

    class ScrubbingManager(NotebookExecutionManager):  # type: ignore[misc]
        scrubber: "Scrubber"

        def save(self, **kwargs: Any) -> None:
            if self.output_path:
                Path(self.output_path).write_bytes(notebook_bytes(self.nb, self.scrubber))
            self.last_save_time = self.now()

    return ScrubbingManager


def _remove_capture_folder(session: KernelSession, folder: str | None) -> None:
    """Capture's scratch folder in a local work dir is ours: do not leave it in the user's notebook folder
    (its parents go too if nothing else is in them; another run's folder stays)."""
    root = Path(session.work_dir)
    if folder is None or session.backend_name not in LOCAL_FS_BACKENDS or not root.is_dir():
        return
    shutil.rmtree(root / folder, ignore_errors=True)
    for parent in Path(folder).parents[:-1]:  # .dsagent/frames, then .dsagent
        try:
            (root / parent).rmdir()
        except OSError:
            break


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)

