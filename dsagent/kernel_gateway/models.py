"""Typed results of kernel work. Errors in the user's code are data, not exceptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from dsagent.errors import CellExecutionError, ExecutionTimeout, KernelDied

__all__ = ["CHART_MIME", "ExecutionStatus", "ExecutionError", "Execution", "DisplayUpdate", "Displays", "FileInfo", "Output"]

#: E2B's chart of a matplotlib figure (its ``e2b/chart`` result: type, title, axes, elements), as a JSON mime type
CHART_MIME = "application/vnd.e2b.chart+json"

ExecutionStatus = Literal["ok", "error", "timeout", "died"]
Output = dict[str, Any]  # one nbformat v4 output dict (stream, display_data, execute_result, error)


@dataclass(frozen=True)
class ExecutionError:
    """What the user's code raised (or why the cell stopped): nbformat's error fields."""

    ename: str
    evalue: str
    traceback: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DisplayUpdate:
    """One display message that named a kernel display id: its new ``data`` and ``metadata``."""

    display_id: str
    data: dict[str, Any]
    metadata: dict[str, Any]


@dataclass
class Displays:
    """The kernel display ids of one execution, which nbformat outputs cannot hold.

    A Jupyter front-end applies ``update_display_data`` (and a new display
    with an id already shown) to every output with that id, in *earlier* cells
    too. Within the cell the outputs are already updated; whoever assembles a
    notebook uses this to update earlier cells (``runs/notebook_displays.py``).
    """

    #: display id -> indices into ``Execution.outputs`` of the outputs showing it (after clear_output)
    owners: dict[str, list[int]] = field(default_factory=dict)
    #: the last display_data / execute_result / update_display_data that carried each id, in arrival order
    updates: list[DisplayUpdate] = field(default_factory=list)


@dataclass
class Execution:
    """The result of one ``KernelSession.execute``.

    ``outputs`` are nbformat output dicts, ready to go into a notebook cell.
    ``status`` is ``ok``, ``error`` (the code raised), ``timeout`` (interrupted
    after its timeout) or ``died`` (the kernel process ended mid-cell).
    """

    code: str
    outputs: list[Output] = field(default_factory=list)
    status: ExecutionStatus = "ok"
    execution_count: int | None = None
    error: ExecutionError | None = None
    started: datetime | None = None
    finished: datetime | None = None
    truncated: bool = False  # output beyond max_output_bytes was dropped
    displays: Displays = field(default_factory=Displays)  # display ids, for updates across cells

    @property
    def duration(self) -> float:
        """Wall seconds from request to the kernel going idle (0 if unknown)."""
        if self.started and self.finished:
            return (self.finished - self.started).total_seconds()
        return 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def stream_text(self, name: str = "stdout") -> str:
        """All text the cell wrote to ``stdout`` (or ``stderr``)."""
        return "".join(
            "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
            for o in self.outputs
            if o.get("output_type") == "stream" and o.get("name") == name
        )

    @property
    def result(self) -> Any:
        """The ``text/plain`` of the cell's execute_result, or None."""
        for out in self.outputs:
            if out.get("output_type") == "execute_result":
                return out.get("data", {}).get("text/plain")
        return None

    def raise_for_status(self) -> "Execution":
        """Raise the matching ``DsagentError`` unless the cell ran cleanly; else return self."""
        if self.status == "ok":
            return self
        err = self.error or ExecutionError(self.status, "")
        if self.status == "died":
            raise KernelDied(
                f"the kernel died while running this cell: {err.evalue}",
                hint="call restart() (state is lost) and re-run the cells you need",
                kernel_name=None,
                outputs=self.outputs,
            )
        if self.status == "timeout":
            raise ExecutionTimeout(
                err.evalue, hint="raise the timeout or make the cell faster", timeout=None, outputs=self.outputs
            )
        raise CellExecutionError(
            f"{err.ename}: {err.evalue}",
            hint="fix the code and run the cell again",
            ename=err.ename,
            evalue=err.evalue,
            traceback=err.traceback,
            execution_count=self.execution_count,
        )


@dataclass(frozen=True)
class FileInfo:
    """One entry of a session's work dir; ``path`` is relative to it, with ``/``."""

    path: str
    size: int
    mtime: float
    is_dir: bool = False
