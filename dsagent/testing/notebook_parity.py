"""Engine comparison: one notebook through papermill's own engine and ``--engine dsagent``, saved notebooks compared.

Used by the engine-parity tests of every backend (see docs/notebook-parity.md
for what must match and what differs on purpose). Normalizing removes only
what legitimately differs between two runs: timestamps, durations, the output
path, random cell ids, and the notebook's ``language_info`` (which nbclient
copies from the kernel_info reply, not part of the ``KernelSession`` API).
"""

from __future__ import annotations

import difflib
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

__all__ = ["EngineRun", "ReferenceRuns", "run_engine", "normalized", "assert_same_notebook", "parity_reference", "PARITY_NOTEBOOKS"]

#: the golden notebooks in tests/files/ (built by tests/files/make_parity_notebooks.py)
PARITY_NOTEBOOKS = ("parity_displays", "parity_tags", "parity_history", "parity_failure", "parity_autosave")

_TIME = "<time>"
_TIMED_KEYS = {"start_time", "end_time", "duration"}


class EngineRun:
    """A notebook papermill saved, and the error papermill raised at the end (None if it succeeded)."""

    def __init__(self, nb: Any, ename: str | None, cell_index: int | None) -> None:
        self.nb, self.ename, self.cell_index = nb, ename, cell_index


def run_engine(source: Path, output: Path, engine: str, *, backend: str | None = None, cwd: Path | None = None, **kwargs: Any) -> EngineRun:
    """``papermill.execute_notebook`` on ``engine`` (``nbclient`` or ``dsagent`` with ``backend``), parameter ``n=3``.

    The kernel is the one the notebook names, as papermill picks it.
    """
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if backend is not None:
        kwargs["backend"] = backend
    if engine == "nbclient":
        kwargs.setdefault("kernel_manager_class", _ipc_kernel_manager())
    ename = index = None
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters={"n": 3}, engine_name=engine, cwd=str(cwd) if cwd else None,
            **{"progress_bar": False, **kwargs},
        )
    except PapermillExecutionError as err:
        ename, index = err.ename, err.cell_index
    return EngineRun(nbformat.read(output, as_version=4), ename, index)


def _ipc_kernel_manager() -> type:
    """jupyter_client's kernel manager on ipc sockets, as nbclient's ``kernel_manager_class`` (a documented option).

    On TCP, jupyter_client picks the kernel's ports by binding and closing them
    and the kernel binds them later; on a busy machine another process may take
    one in between and the reference kernel dies at start ("Kernel died before
    replying to kernel_info", ZMQError "Address already in use"). The ``local``
    backend's kernels use ipc sockets for that reason (``local_sockets.ipc_sockets``);
    the reference does the same. Transport changes nothing a notebook saves.
    """
    from jupyter_client import AsyncKernelManager

    from dsagent.kernel_gateway.local_sockets import ipc_sockets

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**{**ipc_sockets(), **kwargs})

    return IpcKernelManager


class ReferenceRuns:
    """papermill's nbclient engine on the golden notebooks of ``files``, each (with its options) run once."""

    def __init__(self, files: Path, scratch: Path) -> None:
        self.files, self.scratch = files, scratch
        self._runs: dict[str, EngineRun] = {}

    def __call__(self, name: str, **options: Any) -> EngineRun:
        key = f"{name} {sorted(options.items())!r}"
        if key not in self._runs:
            folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch))  # the output keeps its name: a notebook may read it back
            self._runs[key] = run_engine(self.files / f"{name}.ipynb", folder / f"{name}.ipynb", "nbclient", cwd=folder, **options)
        return self._runs[key]


@pytest.fixture(scope="session")
def parity_reference(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRuns:
    """nbclient's runs of ``tests/files/parity_*.ipynb``, shared by every test module of the session.

    A test module loads it with ``pytest_plugins = ["dsagent.testing.notebook_parity"]``.
    """
    return ReferenceRuns(request.config.rootpath / "tests" / "files", tmp_path_factory.mktemp("nbclient"))


def normalized(nb: Any, *, tracebacks: bool = True) -> dict[str, Any]:
    """The notebook as plain JSON with run-to-run differences replaced (see the module docstring)."""
    data = json.loads(json.dumps(nb))
    meta = data.get("metadata", {})
    meta.pop("language_info", None)
    papermill = meta.get("papermill", {})
    papermill.pop("output_path", None)
    _blank_times(papermill)
    for cell in data.get("cells", []):
        cell.pop("id", None)
        _blank_times(cell.get("metadata", {}).get("papermill", {}))
        timing = cell.get("metadata", {}).get("execution")
        if timing is not None:
            cell["metadata"]["execution"] = {key: _TIME for key in timing}
        if "outputs" in cell:
            cell["outputs"] = _coalesced(cell["outputs"], tracebacks)
    return data


def _blank_times(meta: dict[str, Any]) -> None:
    for key in _TIMED_KEYS & meta.keys():
        if meta[key] is not None:
            meta[key] = _TIME


def _coalesced(outputs: list[dict[str, Any]], tracebacks: bool) -> list[dict[str, Any]]:
    """Consecutive stream chunks as one (how many messages a print makes is the kernel's timing)."""
    kept: list[dict[str, Any]] = []
    for output in outputs:
        if output.get("output_type") == "stream":
            output["text"] = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
            if kept and kept[-1].get("output_type") == "stream" and kept[-1]["name"] == output["name"]:
                kept[-1]["text"] += output["text"]
                continue
        if output.get("output_type") == "error" and not tracebacks:
            output["traceback"] = "<traceback>"
        kept.append(output)
    return kept


def assert_same_notebook(reference: EngineRun, candidate: EngineRun, *, tracebacks: bool = True) -> None:
    """Fail with a unified diff unless both runs saved the same notebook and ended the same way."""
    assert (candidate.ename, candidate.cell_index) == (reference.ename, reference.cell_index), "the runs ended differently"
    want = json.dumps(normalized(reference.nb, tracebacks=tracebacks), indent=1, sort_keys=True).splitlines()
    got = json.dumps(normalized(candidate.nb, tracebacks=tracebacks), indent=1, sort_keys=True).splitlines()
    if want != got:
        diff = "\n".join(difflib.unified_diff(want, got, "nbclient", "dsagent", lineterm="", n=2))
        raise AssertionError(f"the dsagent engine saved a different notebook:\n{diff}")
