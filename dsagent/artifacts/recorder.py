"""Record one run: create it, capture every cell, finish it with the right status.

Typical use (an exec, a notebook engine, an agent)::

    with Store.open() as store:
        async with RunRecorder(store, "notebook", title="report", params={"n": 3}) as rec:
            await rec.attach(session)                      # installs the DataFrame hook
            execution = await rec.execute("df.head()")     # cell_started, run, capture, one write
            # or, when the caller executes cells itself:
            #   await rec.cell_started(i, code); ...; await rec.record_cell(i, execution)
        # leaving the block finishes the run: succeeded, or failed when a cell failed

Everything the recorder writes — the run's title and parameters, events,
artifacts made from outputs, the notebook, the error — passes through a
``dsagent.secrets.Scrubber`` first: a secret of this process's environment
that the code printed (or got as a parameter) is stored as ``[redacted NAME]``.
Files the code wrote and DataFrames it displayed are data and stay as they are.

Leaving with an exception marks the run ``failed`` (with the error), with
cancellation, Ctrl-C or SIGTERM ``cancelled``. A process killed outright leaves
the run ``running``; the next ``Store.open`` on this host marks it failed.
Store writes run in a worker thread so the event loop keeps serving the kernel.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import signal
import threading
from typing import Any, Callable, Mapping, Sequence

from dsagent.artifacts.capture import Capture, artifacts_from_outputs, CellCapture
from dsagent.artifacts.models import Artifact, NewArtifact, Run
from dsagent.artifacts.store import Store
from dsagent.kernel_gateway.base import KernelSession, OutputHook
from dsagent.kernel_gateway.models import Execution, ExecutionError
from dsagent.secrets import Scrubber
from dsagent.settings import Settings

__all__ = ["RunRecorder", "CALLER_HANDLES_SIGTERM", "settings_secrets"]

log = logging.getLogger(__name__)

#: set to True by a long-lived process that stops its own runs on SIGTERM (the scheduler, the
#: dashboard): recorders entered in that context then leave SIGTERM alone, so the process's
#: handler is never displaced while a run is open and a stop signal cannot fall between the two
CALLER_HANDLES_SIGTERM: contextvars.ContextVar[bool] = contextvars.ContextVar("dsagent_caller_handles_sigterm", default=False)

_CODE_IN_EVENT_LIMIT = 20_000
#: seconds between ``cell_output`` events of a running cell: a loop printing fast costs ~2 writes a second, not one per line
STREAM_EVERY = 0.5
#: characters of a running cell's printed text written as ``cell_output`` events; the whole output comes with the cell's end
_STREAMED_LIMIT = 20_000
#: artifact kinds made from what code printed or displayed (scrubbed); files and tables are the code's data
_SCRUBBED_KINDS = ("html", "json", "text", "notebook", "image")


class RunRecorder:
    """Creates a run on enter, records cells, sets the final status on exit (see module docstring)."""

    def __init__(
        self,
        store: Store,
        kind: str,
        *,
        title: str | None = None,
        params: Mapping[str, Any] | None = None,
        backend: str | None = None,
        parent_id: int | None = None,
        schedule_id: str | None = None,
        run_id: int | None = None,
        launched: Mapping[str, Any] | None = None,
        scrubber: Scrubber | None = None,
    ) -> None:
        """``run_id``: take over an existing (say, queued) run instead of creating one. ``launched``: who started
        the run and from where (``{"user": ..., "via": "dashboard"}``), written as a ``launched`` event first.
        ``scrubber``: what removes secrets from all of it (default: this process's secrets, see the module docstring)."""
        self.store = store
        self.scrubber = scrubber if scrubber is not None else Scrubber(extra=settings_secrets(getattr(store, "settings", None)))
        self._launched = dict(launched) if launched else None
        title = self.scrubber.text(title) if title else title
        params = self.scrubber.value(dict(params)) if params else params
        self._create = dict(kind=kind, title=title, params=params, backend=backend, parent_id=parent_id, schedule_id=schedule_id)
        self._existing = run_id
        self.run: Run | None = None
        self.capture: Capture | None = None
        self.artifacts: list[Artifact] = []
        self.failed_cells: list[int] = []
        self._first_error: str | None = None
        self._next_cell = 0
        self._finished = False
        self._restore_signal: Callable[[], None] | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []  # deferred events, written with the next write
        self._announce: asyncio.TimerHandle | None = None  # writes a deferred cell_started if the cell runs long
        self._flushing: asyncio.Task[None] | None = None
        self._streamed: _StreamBuffer | None = None  # printed text of the running cell, not yet written

    @property
    def run_id(self) -> int:
        if self.run is None:
            raise RuntimeError("the run is created when the recorder is entered (async with)")
        return self.run.id

    async def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if getattr(self.store, "in_memory", False):
            # a RunJournal (a batch child on a Dask worker) only appends to a list: a trip through the thread pool
            # for each of a child's dozen writes cost more than the write, and cannot be cut off halfway anyway
            return fn(*args, **kwargs)
        # shielded: a cancellation must not cut a transaction off halfway through our bookkeeping
        return await asyncio.shield(asyncio.to_thread(fn, *args, **kwargs))

    async def __aenter__(self) -> "RunRecorder":
        if self._existing is None:
            kind = self._create.pop("kind")
            self.run = await self._write(self.store.create_run, kind, **self._create)
        else:
            self.run = await self._write(self.store.update_run_status, self._existing, "running")
        if self._launched is not None:
            await self._write(self.store.append_events, self.run.id, [("launched", self.scrubber.value(self._launched))])
        self._cancel_on_sigterm()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if self._finished:
                return
            if exc_type is not None and issubclass(exc_type, (asyncio.CancelledError, KeyboardInterrupt)):
                await self.finish("cancelled", error="cancelled (Ctrl-C, SIGTERM or the caller gave up)")
            elif exc is not None:
                await self.finish("failed", error=f"{exc_type.__name__}: {exc}".strip())
            else:
                await self.finish()
        except Exception:
            if exc is None:
                raise
            log.warning("could not record the end of run %s", self.run and self.run.id, exc_info=True)
        finally:
            if self._restore_signal is not None:
                self._restore_signal()

    def _cancel_on_sigterm(self) -> None:
        """SIGTERM cancels the task that entered the recorder, so the run ends ``cancelled``."""
        if threading.current_thread() is not threading.main_thread() or CALLER_HANDLES_SIGTERM.get():
            return
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        previous = signal.getsignal(signal.SIGTERM)
        try:
            loop.add_signal_handler(signal.SIGTERM, task.cancel if task else (lambda: None))
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
            return

        def restore() -> None:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

        self._restore_signal = restore

    async def attach(self, session: KernelSession, *, capture: bool = True) -> None:
        """Capture this session's cells: DataFrame hook installed, work dir watched."""
        self.capture = Capture(session if capture else None, self.store.settings)
        events = await self.capture.install()
        if events:
            await self._write(self.store.append_events, self.run_id, events)

    async def cell_started(self, cell: int, code: str, *, announce_after: float | None = None) -> None:
        """Say a cell began, so followers see long cells running.

        ``announce_after``: write the event only once the cell has run that many
        seconds; a cell that ends sooner gets it in its ``record_cell`` transaction
        (one write per short cell instead of two).
        """
        self._pending.append(("cell_started", {"cell": cell, "code": code[:_CODE_IN_EVENT_LIMIT]}))
        if announce_after is None:
            await self.flush_events()
        else:
            loop = asyncio.get_running_loop()
            self._announce = loop.call_later(announce_after, self._flush_in_background)
        if self.capture is not None:
            await self.capture.before_cell()

    def stream_outputs(self, cell: int) -> OutputHook:
        """An ``on_output`` hook for ``session.execute`` that makes what the running cell prints visible to
        followers while it runs: ``cell_output`` events (``{"cell", "name", "text"}``, text since the last one)
        at most every ``STREAM_EVERY`` seconds. A cell that ends sooner writes none (its outputs come with its end)."""
        self._streamed = buffer = _StreamBuffer(cell)

        def on_output(output: dict[str, Any]) -> None:
            if self._streamed is buffer and buffer.add(output) and buffer.timer is None:
                buffer.timer = asyncio.get_running_loop().call_later(STREAM_EVERY, self._emit_stream, buffer)
        return on_output

    def _emit_stream(self, buffer: "_StreamBuffer") -> None:
        buffer.timer = None
        if self._streamed is buffer:
            self._pending.extend(buffer.take())  # after the cell's deferred cell_started, if it is still pending
            self._flush_in_background()

    def _flush_in_background(self) -> None:
        self._announce = None
        previous = self._flushing

        async def flush() -> None:  # after the flush in flight: events stay in order
            if previous is not None:
                await previous
            await self.flush_events()
        self._flushing = asyncio.ensure_future(flush())

    async def _settle_announcement(self) -> None:
        """Cancel a pending announcement and streamed text (the cell's end carries it all), or wait for a
        write in flight (events stay in order)."""
        if self._announce is not None:
            self._announce.cancel()
            self._announce = None
        if self._streamed is not None:
            if self._streamed.timer is not None:
                self._streamed.timer.cancel()
            self._streamed = None
        if self._flushing is not None:
            flushing, self._flushing = self._flushing, None
            await flushing

    async def record_cell(
        self,
        cell: int,
        execution: Execution,
        extra: Sequence[NewArtifact] = (),
        follow_up: Callable[[list[Artifact]], Sequence[tuple[str, dict[str, Any]]]] | None = None,
    ) -> list[Artifact]:
        """Capture a finished cell and write its artifacts and events in one transaction.

        ``follow_up(added_artifacts)`` returns more events for the same transaction (an agent's
        journal of the cell, which names the artifact ids): all of it is kept, or none.
        """
        execution = self._scrubbed(execution)
        if self.capture is not None:
            captured = await self.capture.after_cell(execution, cell)
        else:
            captured = CellCapture(artifacts_from_outputs(execution.outputs, cell))
        captured.artifacts.extend(extra)
        captured.artifacts[:] = [self._scrubbed_artifact(item) for item in captured.artifacts]
        finished = {
            "cell": cell,
            "status": execution.status,
            "execution_count": execution.execution_count,
            "duration": round(execution.duration, 4),
            "outputs": len(execution.outputs),
            "artifacts": len(captured.artifacts),
            "truncated": execution.truncated,
        }
        if execution.error is not None:
            finished["error"] = {"ename": execution.error.ename, "evalue": execution.error.evalue}
        if execution.status != "ok":
            self.failed_cells.append(cell)
            if self._first_error is None and execution.error is not None:
                self._first_error = f"cell {cell}: {execution.error.ename}: {execution.error.evalue}"
        await self._settle_announcement()
        added = await self._write(self._write_cell, captured, finished, self._take_pending(), follow_up)
        self.artifacts.extend(added)
        return added

    def _write_cell(self, captured: CellCapture, finished: dict[str, Any], pending: list[tuple[str, dict[str, Any]]],
                    follow_up: Callable[[list[Artifact]], Sequence[tuple[str, dict[str, Any]]]] | None) -> list[Artifact]:
        with self.store.transaction() as tx:
            added = tx.add_artifacts(self.run_id, captured.artifacts)
            more = list(follow_up(added)) if follow_up is not None else []
            tx.append_events(self.run_id, self._scrubbed_events([*pending, *captured.events, ("cell_finished", finished), *more]))
        return added

    def _scrubbed(self, execution: Execution) -> Execution:
        """A copy of ``execution`` with secrets removed from its code, outputs and error (the caller's stays as it is)."""
        if not self.scrubber:
            return execution
        error = execution.error
        if error is not None:
            error = ExecutionError(self.scrubber.text(error.ename), self.scrubber.text(error.evalue), self.scrubber.value(error.traceback))
        return dataclasses.replace(execution, code=self.scrubber.text(execution.code), outputs=self.scrubber.outputs(execution.outputs), error=error)

    def _scrubbed_artifact(self, item: NewArtifact) -> NewArtifact:
        if not self.scrubber or item.kind not in _SCRUBBED_KINDS or (item.kind == "image" and item.mime != "image/svg+xml"):
            return item
        return dataclasses.replace(item, name=self.scrubber.text(item.name), data=self.scrubber.data(item.data))

    def _scrubbed_events(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, Any]]:
        return [(kind, self.scrubber.value(dict(payload))) for kind, payload in events]

    async def execute(
        self, code: str, *, timeout: float | None = None, on_output: OutputHook | None = None, session: KernelSession | None = None
    ) -> Execution:
        """Run one cell on the attached session (or ``session``) and record it."""
        session = session or (self.capture.session if self.capture else None)
        if session is None:
            raise RuntimeError("attach(session) first, or pass session=")
        cell = self._next_cell
        self._next_cell += 1
        await self.cell_started(cell, code)
        execution = await session.execute(code, timeout=timeout, on_output=on_output)
        await self.record_cell(cell, execution)
        return execution

    async def add_artifacts(self, items: Sequence[NewArtifact]) -> list[Artifact]:
        """Add artifacts not tied to a cell's capture (e.g. the executed notebook)."""
        added = await self._write(self.store.add_artifacts, self.run_id, [self._scrubbed_artifact(item) for item in items])
        self.artifacts.extend(added)
        return added

    async def event(self, type_: str, payload: Mapping[str, Any], *, defer: bool = False) -> None:
        """Append one event (agent step, review verdict, ...).

        ``defer``: keep it for the next write (a cell starting or finishing, another event, the end of
        the run) instead of a transaction of its own; for events another write follows at once.
        """
        self._pending.append((type_, dict(payload)))
        if not defer:
            await self.flush_events()

    async def flush_events(self) -> None:
        """Write the deferred events now."""
        pending = self._take_pending()
        if pending:
            await self._write(self.store.append_events, self.run_id, self._scrubbed_events(pending))

    def _take_pending(self) -> list[tuple[str, dict[str, Any]]]:
        pending, self._pending = self._pending, []
        return pending

    async def finish(self, status: str | None = None, *, error: str | None = None) -> Run:
        """Set the final status; default: ``failed`` if a cell failed, else ``succeeded``."""
        await self._settle_announcement()
        await self.flush_events()
        if status is None:
            status = "failed" if self.failed_cells else "succeeded"
            error = error or self._first_error
        error = self.scrubber.text(error) if error else error
        self.run = await self._write(self.store.update_run_status, self.run_id, status, error=error)
        self._finished = True
        return self.run


@dataclasses.dataclass
class _StreamBuffer:
    """Text a running cell printed since its last ``cell_output`` event, per stream (stdout, stderr)."""

    cell: int
    texts: dict[str, str] = dataclasses.field(default_factory=dict)
    sent: int = 0
    timer: asyncio.TimerHandle | None = None

    def add(self, output: dict[str, Any]) -> bool:
        """Keep a ``stream`` output's text (up to ``_STREAMED_LIMIT`` in all); whether it was kept."""
        if output.get("output_type") != "stream" or self.sent >= _STREAMED_LIMIT:
            return False
        text = output.get("text", "")
        text = "".join(text) if isinstance(text, list) else str(text)
        room = _STREAMED_LIMIT - self.sent - sum(map(len, self.texts.values()))
        if room <= 0 or not text:
            return False
        name = str(output.get("name", "stdout"))
        self.texts[name] = self.texts.get(name, "") + text[:room]
        return True

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        events = [("cell_output", {"cell": self.cell, "name": name, "text": text}) for name, text in self.texts.items() if text]
        self.sent += sum(map(len, self.texts.values()))
        self.texts = {}
        return events


def settings_secrets(settings: Settings | None) -> list[str]:
    """Secrets that may come from ``dsagent.toml`` rather than the environment (redacted as well)."""
    if settings is None:
        return []
    return [settings.jupyter_token, settings.dashboard_cookie_secret]
