"""The cell loop of notebook runs: a papermill-managed notebook executed on a ``KernelSession``.

Shared by the ``dsagent`` papermill engine (``notebook.py``) and
``run_notebook`` (``notebook_run.py``). Imports neither papermill nor
nbformat at module level, so ``dsagent run`` can start its kernel while they load.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TextIO, Union

from dsagent.errors import NotebookError
from dsagent.kernel_gateway.models import Execution, ExecutionError, Output
from dsagent.runs.notebook_displays import DisplayIndex

if TYPE_CHECKING:
    from nbformat import NotebookNode
    from papermill.engines import NotebookExecutionManager

    from dsagent.kernel_gateway.base import KernelBackend, KernelSession
    from dsagent.settings import Settings

__all__ = ["CellHooks", "CellOptions", "execute_cells", "make_backend", "notebook_kernel_name", "LOCAL_FS_BACKENDS"]

#: backends whose kernels see this machine's files, so a notebook can run in its own folder
LOCAL_FS_BACKENDS = frozenset({"local", "sandbox"})
#: nbclient's tag for a cell whose error is expected (the run goes on)
RAISES_TAG = "raises-exception"

Hook = Callable[..., Union[None, Awaitable[None]]]


@dataclass
class CellHooks:
    """Callables (sync or async) the cell loop calls; failures in them propagate.

    ``started(index, cell)`` before a code cell runs, ``finished(index, cell,
    execution)`` after it (also for the cell that failed or timed out), with
    ``index`` the cell's position in the executed notebook.
    """

    started: Hook | None = None
    finished: Hook | None = None


@dataclass(frozen=True)
class CellOptions:
    """nbclient's execution options that the cell loop honours, with nbclient's names and defaults.

    ``papermill --engine dsagent`` passes them through from
    ``papermill.execute_notebook(..., allow_errors=True)`` as the nbclient engine does.
    """

    allow_errors: bool = False
    allow_error_names: tuple[str, ...] = ()
    force_raise_errors: bool = False
    skip_cells_with_tag: str = "skip-execution"
    record_timing: bool = True

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "CellOptions":
        """The options among an engine's keyword arguments (others are ignored, as papermill does)."""
        return cls(
            allow_errors=bool(kwargs.get("allow_errors", False)),
            allow_error_names=tuple(kwargs.get("allow_error_names") or ()),
            force_raise_errors=bool(kwargs.get("force_raise_errors", False)),
            skip_cells_with_tag=str(kwargs.get("skip_cells_with_tag", "skip-execution")),
            record_timing=bool(kwargs.get("record_timing", True)),
        )

    def skips(self, cell: Any) -> bool:
        return cell.cell_type != "code" or not cell.source.strip() or self.skip_cells_with_tag in _tags(cell)

    def allows(self, cell: Any, execution: Execution) -> bool:
        """Whether the run goes on after this cell's error (only errors raised by the code, as in nbclient)."""
        if execution.status != "error" or self.force_raise_errors:
            return False
        ename = execution.error.ename if execution.error else ""
        return self.allow_errors or ename in self.allow_error_names or RAISES_TAG in _tags(cell)


async def _call(hook: Hook | None, *args: Any) -> None:
    if hook is not None:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result


async def execute_cells(
    nb_man: "NotebookExecutionManager",
    session: "KernelSession",
    *,
    timeout: float | None = None,
    log_output: bool = False,
    stdout_file: TextIO | None = None,
    stderr_file: TextIO | None = None,
    hooks: CellHooks | None = None,
    options: CellOptions | None = None,
) -> None:
    """Run the notebook's code cells in order on ``session``, stopping at the first failure.

    As nbclient does: a cell tagged ``skip-execution`` is not run, an error in
    a cell tagged ``raises-exception`` does not stop the run, and display
    updates reach outputs of earlier cells. Cell metadata goes through
    ``nb_man`` as papermill's own engine does it. A cell that fails, times out
    or loses its kernel gets an error output naming why, so papermill's error
    cell points at it. On cancellation (Ctrl-C, SIGTERM) the running cell is
    marked failed with a ``Cancelled`` output and the cancellation propagates;
    later cells stay ``pending``.
    """
    hooks, options = hooks or CellHooks(), options or CellOptions()
    displays = DisplayIndex()
    for index, cell in enumerate(nb_man.nb.cells):
        nb_man.cell_start(cell, index)
        if options.skips(cell):
            nb_man.cell_complete(cell, cell_index=index)  # nbclient skips these too
            continue
        cell.outputs = []
        printer = _OutputLog(nb_man, cell, log_output, stdout_file, stderr_file)
        await _call(hooks.started, index, cell)
        try:
            execution = await session.execute(cell.source, timeout=timeout, on_output=printer)
        except (asyncio.CancelledError, KeyboardInterrupt):
            cell.outputs.append(_node(_error_output("Cancelled", "the run was cancelled (Ctrl-C or SIGTERM) while this cell ran")))
            nb_man.cell_exception(cell, cell_index=index)
            nb_man.cell_complete(cell, cell_index=index)
            raise
        if displays.add_cell(_fill_cell(cell, execution, options.record_timing), execution.displays):
            nb_man.autosave_cell()
        await _call(hooks.finished, index, cell, execution)
        if options.allows(cell, execution):
            nb_man.cell_complete(cell, cell_index=index)  # an expected error: nbclient goes on
            continue
        if not execution.ok:
            nb_man.cell_exception(cell, cell_index=index)
            nb_man.cell_complete(cell, cell_index=index)
            return
        nb_man.cell_complete(cell, cell_index=index)


class _OutputLog:
    """Streams outputs into the cell as they arrive (autosave sees them), logs them if asked."""

    def __init__(self, nb_man: Any, cell: Any, log_output: bool, stdout_file: TextIO | None, stderr_file: TextIO | None) -> None:
        self.nb_man, self.cell = nb_man, cell
        self.log_output, self.stdout_file, self.stderr_file = log_output, stdout_file, stderr_file

    def __call__(self, output: Output) -> None:
        self.cell.outputs.append(_node(output))
        self.nb_man.autosave_cell()
        if output["output_type"] == "stream":
            self._stream(output["name"], output["text"])
        elif self.log_output and "text/plain" in output.get("data", {}):
            from papermill.log import logger

            logger.info(_text(output["data"]["text/plain"]))

    def _stream(self, name: str, text: Any) -> None:
        from papermill.log import logger

        text = _text(text)
        target = self.stdout_file if name == "stdout" else self.stderr_file
        if self.log_output:
            (logger.info if name == "stdout" else logger.warning)(text)
        if target is not None:
            target.write(text)
            target.flush()


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _node(output: Output) -> "NotebookNode":
    from nbformat import from_dict

    return from_dict(output)


def _error_output(ename: str, evalue: str) -> Output:
    return {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _fill_cell(cell: Any, execution: Execution, record_timing: bool = True) -> list[Any]:
    """The cell's final outputs and count; timeouts and kernel deaths get an error output that says so.

    Returns the saved output for each of ``execution.outputs`` (None for one left out).
    """
    err = execution.error or ExecutionError(execution.status, "")
    # on a timeout the KeyboardInterrupt traceback is our own interrupt; what the user needs is the timeout
    drop_errors = execution.status == "timeout"
    saved = [None if drop_errors and o.get("output_type") == "error" else _node(o) for o in execution.outputs]
    outputs = [o for o in saved if o is not None]
    if execution.status == "timeout":
        outputs.append(_node(_error_output("ExecutionTimeout", err.evalue)))
    elif execution.status == "died":
        outputs.append(_node(_error_output("KernelDied", f"kernel died: {err.evalue}")))
    elif execution.status == "error" and not any(o.get("output_type") == "error" for o in outputs):
        outputs.append(_node(_error_output(err.ename, err.evalue)))
    cell.outputs = outputs
    cell.execution_count = execution.execution_count
    if record_timing:
        _record_timing(cell, execution)
    return saved


def _record_timing(cell: Any, execution: Execution) -> None:
    """nbclient's ``record_timing`` keys in ``metadata.execution``, timed by this client rather than the kernel."""
    if execution.started is None or execution.finished is None:
        return
    started, finished = (t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in (execution.started, execution.finished))
    cell.metadata["execution"] = {
        "iopub.execute_input": started, "iopub.status.busy": started, "iopub.status.idle": finished, "shell.execute_reply": finished,
    }


# -- kernels: which backend, which kernelspec -----------------------------------


def notebook_kernel_name(nb: Any, name: str | None = None, *, path: str | None = None) -> str:
    """The kernelspec a notebook asks for (``name`` overrides); a clear error if it names none."""
    if name:
        return name
    metadata = nb.get("metadata") or {}  # a NotebookNode or the plain dict of a notebook's JSON
    spec = metadata.get("kernelspec") or {}
    language = str(spec.get("language") or (metadata.get("language_info") or {}).get("name") or "python").lower()
    if language != "python":
        raise NotebookError(
            f"{path or 'the notebook'} is written for a {language} kernel; dsagent backends run Python kernels",
            hint="run it with papermill's own engine (papermill --engine nbclient)",
            path=path, reason="wrong_language",
        )
    if not spec.get("name"):
        raise NotebookError(
            f"{path or 'the notebook'} names no kernelspec (metadata.kernelspec.name is missing)",
            hint="pass one (dsagent run --kernel python3, papermill -k python3), or open and save the notebook in Jupyter",
            path=path, reason="no_kernelspec",
        )
    return str(spec["name"])


def make_backend(name: str | None, settings: "Settings", kernel_name: str | None, **options: Any) -> "KernelBackend":
    """A backend instance; local-family backends start the notebook's kernelspec."""
    from dsagent.kernel_gateway.registry import get_backend

    chosen = name or settings.backend
    if chosen in LOCAL_FS_BACKENDS and kernel_name:
        options.setdefault("kernel_name", kernel_name)
    return get_backend(chosen, settings, **options)
