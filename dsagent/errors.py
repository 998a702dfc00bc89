"""The one exception tree of dsagent.

Every failure a user can see is a ``DsagentError``: it says what went wrong
(``str(err)``) and what to do next (``err.hint``). Subclasses carry structured
fields so callers (CLI, dashboard, runs) can act on them, and every class
pickles cleanly so errors cross process boundaries (Dask, subprocesses).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DsagentError",
    "SettingsError",
    "WorkspaceError",
    "BackendNotFound",
    "BackendUnavailable",
    "KernelStartFailed",
    "KernelDied",
    "ExecutionTimeout",
    "CellExecutionError",
    "SessionClosed",
    "FileAccessError",
    "KernelServerError",
    "StoreLocked",
    "StoreCorrupt",
    "SchemaTooNew",
    "NotFound",
    "StorageFull",
    "SandboxServiceError",
    "LLMUnavailable",
    "LLMRequestError",
    "NotebookError",
    "AgentError",
    "ChatError",
]


class DsagentError(Exception):
    """Root of all dsagent errors: a message plus a hint saying what to do next."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        if hint:
            self.hint = hint
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __reduce__(self):  # keyword-only fields would be lost by the default
        return (_rebuild, (type(self), self.message, self.hint, self.fields))

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


def _rebuild(cls: type[DsagentError], message: str, hint: str, fields: dict[str, Any]) -> DsagentError:
    err = cls.__new__(cls)
    DsagentError.__init__(err, message, hint=hint, **fields)
    return err


class SettingsError(DsagentError):
    """A setting has a value that cannot be used (fields: name, value)."""


class WorkspaceError(DsagentError):
    """The workspace folder cannot be used (fields: path)."""


class BackendNotFound(DsagentError):
    """No kernel backend is registered under the name asked for (fields: name, known)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"no kernel backend named {name!r}; known: {', '.join(sorted(known)) or '(none)'}",
            hint="pick one of the known names (`dsagent backends` lists them), "
            "or install the package that provides it",
            name=name,
            known=sorted(known),
        )


class BackendUnavailable(DsagentError):
    """A backend is installed but cannot run here (fields: name, reason)."""


class KernelStartFailed(DsagentError):
    """A kernel could not be started (fields: kernel_name, reason)."""


class KernelDied(DsagentError):
    """The kernel process ended while it was in use (fields: kernel_name, outputs)."""


class ExecutionTimeout(DsagentError):
    """A cell ran longer than its timeout and was interrupted (fields: timeout, outputs)."""


class CellExecutionError(DsagentError):
    """The user's code raised; raised only on request, via ``Execution.raise_for_status()``.

    Fields: ename, evalue, traceback (list of str), execution_count.
    """


class SessionClosed(DsagentError):
    """A kernel session was used after ``shutdown()``."""


class FileAccessError(DsagentError):
    """A file in a session's work dir cannot be read or written (fields: path)."""


class KernelServerError(BackendUnavailable):
    """A remote Jupyter server cannot be reached or refused a request (fields: name, reason, url, status)."""


class StoreLocked(DsagentError):
    """The workspace database stayed busy past the lock timeout (fields: path, timeout)."""


class StoreCorrupt(DsagentError):
    """The file at the database path is not a usable DuckDB database; it is left untouched (fields: path)."""


class SchemaTooNew(DsagentError):
    """The database was written by a newer dsagent (fields: path, found, supported)."""


class NotFound(DsagentError):
    """No run or artifact has the id asked for (fields: what, id)."""


class StorageFull(DsagentError):
    """The disk ran out of space while saving run data (fields: path)."""


class SandboxServiceError(BackendUnavailable):
    """The E2B service or one of its sandboxes failed a request (fields: name, reason, sandbox_id).

    ``reason``: ``no_api_key``, ``auth``, ``rate_limit``, ``busy``, ``expired``, ``network`` or ``sandbox``.
    """


class LLMUnavailable(DsagentError):
    """The LLM endpoint could not be reached or kept failing after the retries.

    Fields: endpoint (no credentials), model, role, status, attempts, and ``reason``:
    ``connection``, ``timeout``, ``rate_limit``, ``server_error`` or ``stream_error``.
    """


class LLMRequestError(DsagentError):
    """The LLM endpoint refused the request; retrying the same request cannot help.

    Fields: endpoint, model, role, status, and ``reason``: ``bad_request``, ``auth``,
    ``permission``, ``not_found``, ``quota`` or ``no_api_key``.
    """


class NotebookError(DsagentError):
    """A notebook run cannot start: the file, its parameters or the output path are unusable.

    Fields: path, and ``reason``: ``not_found``, ``not_a_notebook``, ``no_kernelspec``,
    ``wrong_language``, ``bad_parameter`` or ``bad_output``.
    """


class AgentError(DsagentError):
    """An agent run cannot start: its inputs are unusable (fields: ``reason``: ``no_data``, ``bad_data``, ``no_task``)."""


class ChatError(DsagentError):
    """A chat cannot do what was asked (fields: ``reason``: ``name_taken``, ``busy``, ``open``, ``no_pending``, ``data``)."""
