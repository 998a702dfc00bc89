"""The ``dsagent`` papermill engine: notebook cells run through a ``KernelSession`` of any backend.

Papermill keeps doing what papermill does (parameter injection, ``-f``/``-r``,
per-cell metadata through its ``NotebookExecutionManager``, autosave, the
progress bar, the error cell, ``--cwd``, ``--log-output``); this module only
executes cells::

    papermill in.ipynb out.ipynb -p alpha 0.5 --engine dsagent
    DSAGENT_BACKEND=jupyter papermill in.ipynb out.ipynb --engine dsagent
    papermill.execute_notebook("in.ipynb", "out.ipynb", engine_name="dsagent", backend="e2b")

``execute_cells`` (``notebook_cells.py``) is the shared cell loop: the engine runs it on a session it
starts itself, ``run_notebook`` (``notebook_run.py``) on a session from the
caller's backend (a warm pool) with recording hooks.

Papermill imports this module when it loads its engines (entry point group
``papermill.engine``), so it imports nothing heavy at module level.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, TextIO

from dsagent.runs.notebook_cells import LOCAL_FS_BACKENDS, CellOptions, execute_cells, make_backend, notebook_kernel_name

if TYPE_CHECKING:
    from nbformat import NotebookNode
    from papermill.engines import NotebookExecutionManager

__all__ = ["DsagentEngine"]


class _DsagentEngineMethods:
    """What ``DsagentEngine`` adds to papermill's ``Engine`` (see ``__getattr__`` below for why it is split)."""

    @classmethod
    def nb_kernel_name(cls, nb: Any, name: str | None = None) -> str:
        return notebook_kernel_name(nb, name)

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: "NotebookExecutionManager",
        kernel_name: str,
        log_output: bool = False,
        stdout_file: TextIO | None = None,
        stderr_file: TextIO | None = None,
        start_timeout: float = 60,
        execution_timeout: float | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ) -> "NotebookNode":
        """Start a session (in papermill's cwd for local backends), run the cells, shut it down.

        nbclient's cell options in ``kwargs`` (``allow_errors``, ``skip_cells_with_tag``, ...) apply
        as under papermill's own engine; see docs/notebook-parity.md for each option.
        """
        from papermill.log import logger

        from dsagent.settings import Settings

        # papermill always passes its own default (60); only a changed value overrides the setting
        settings = Settings(kernel_start_timeout=float(start_timeout)) if start_timeout and float(start_timeout) != 60 else Settings()

        async def run() -> None:
            async with make_backend(backend, settings, kernel_name, pool_size=0) as kernels:
                work_dir = os.getcwd() if kernels.name in LOCAL_FS_BACKENDS else None
                async with await kernels.start_session(work_dir=work_dir) as session:
                    logger.info(f"Executing notebook with kernel: {kernel_name}")  # as papermill's own engine logs it
                    await execute_cells(
                        nb_man, session, timeout=execution_timeout, log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file,
                        options=CellOptions.from_kwargs(kwargs),
                    )

        asyncio.run(run())
        return nb_man.nb


def __getattr__(name: str) -> Any:
    """``DsagentEngine`` (papermill engine ``dsagent``): the backend comes from the ``backend`` kwarg or ``DSAGENT_BACKEND``.

    Built on first access rather than at import: papermill loads its engine
    entry points while ``papermill.engines`` is still being imported, so a
    module-level ``from papermill.engines import Engine`` here would be a
    circular import whenever this module is imported before papermill. By the
    time papermill asks for the attribute, ``Engine`` is defined.
    """
    if name != "DsagentEngine":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from papermill.engines import Engine

    engine = type("DsagentEngine", (_DsagentEngineMethods, Engine), {"__module__": __name__, "__doc__": __getattr__.__doc__})
    globals()[name] = engine
    return engine
