"""The one loop that runs a cell, for every backend.

Each backend differs in where a cell's messages come from and how to tell
that its kernel is gone; it says so through a ``KernelLink``. Everything
else is decided here, once:

- outputs go through ``OutputCollector`` and reach ``on_output`` as they
  arrive;
- death: a source that learns from its stream that the kernel is gone (a
  server's ``dead`` status, an E2B ``ContextRestarting``) raises
  ``KernelGone``; after ``poll_seconds`` of silence the loop asks the link's
  liveness probe (a pid, ``GET /api/kernels/{id}``, the SDK's stream task);
- timeout: at the deadline the kernel is interrupted; if the cell has not
  ended ``interrupt_grace`` seconds later (plus the link's
  ``interrupt_latency``, the time its server takes to act on an interrupt) the
  kernel is restarted and the result says that its state is lost. The
  deadline is checked after every message too, so a cell that never goes
  quiet still times out;
- ``restart()`` called while a cell runs ends that cell at once (``abort``)
  instead of waiting behind it: restart is how a user gets out of a stuck cell;
- a caller that gives up (cancellation) leaves no cell running: ``abandon``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from dsagent.kernel_gateway.base import OutputHook, run_hook
from dsagent.kernel_gateway.models import Execution, ExecutionError
from dsagent.kernel_gateway.outputs import OutputCollector

__all__ = ["RESTART_CALLED", "KernelGone", "KernelLink", "restarting", "run_cell"]

log = logging.getLogger(__name__)

#: why a cell ended when its session was restarted while it ran
RESTART_CALLED = "restart() was called"
#: how long the loop waits for the shell reply after the kernel went idle without one on its stream
REPLY_SECONDS = 5.0


class KernelGone(Exception):
    """Raised by a link when its stream says the kernel is gone; ``why`` names what happened."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class KernelLink(ABC):
    """What the execute loop needs from a backend: one cell's messages and a way to act on its kernel.

    A link belongs to one session and is used by one cell at a time (the
    session's lock). Messages are Jupyter-shaped dicts (``header.msg_type``,
    ``parent_header``, ``content``), only those of the current cell.
    """

    #: seconds of silence after which ``probe()`` is asked
    poll_seconds: float = 0.2
    #: extra seconds an interrupt may take to reach the kernel (on top of ``interrupt_grace``)
    interrupt_latency: float = 0.0

    def __init__(self) -> None:
        self.aborted = ""  # set by ``abort``: the running cell ends as died with this reason

    def abort(self, why: str) -> None:
        """End the running cell at once as ``died`` (the session is being restarted)."""
        self.aborted = why

    @abstractmethod
    async def send(self, code: str) -> None:
        """Start running ``code`` as the current cell."""

    @abstractmethod
    async def receive(self, wait: float) -> dict[str, Any] | None:
        """The cell's next message; None after ``wait`` seconds without one; ``KernelGone`` when the stream says so."""

    @abstractmethod
    async def probe(self) -> str:
        """Liveness: "" while the kernel is there, else why it is gone."""

    @abstractmethod
    async def interrupt(self) -> None:
        """Ask the kernel to stop the current cell."""

    @abstractmethod
    async def restart(self) -> None:
        """Replace the kernel with a fresh one (state is lost)."""

    async def reply(self, timeout: float) -> dict[str, Any] | None:
        """The cell's ``execute_reply`` when it did not come with the messages (None: there is none)."""
        return None

    async def abandon(self) -> None:
        """The caller gave up on the cell: do not leave it running."""
        await self.interrupt()


@contextlib.asynccontextmanager
async def restarting(lock: asyncio.Lock, link: KernelLink) -> AsyncIterator[None]:
    """Hold the session's lock for a restart; a cell running now (maybe stuck) ends at once instead of being waited for."""
    if lock.locked():
        link.abort(RESTART_CALLED)
    async with lock:
        link.aborted = ""
        yield


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def run_cell(
    link: KernelLink, code: str, *, timeout: float | None, grace: float, max_output_bytes: int, on_output: OutputHook | None
) -> Execution:
    """Run ``code`` through ``link`` until the kernel is idle, times out or is gone; never raises for user code."""
    collector = OutputCollector(max_output_bytes)
    result = Execution(code=code, started=_now())
    link.aborted = ""
    try:
        return await _drive(link, code, result, collector, timeout, grace, on_output)
    except asyncio.CancelledError:
        try:
            await asyncio.shield(link.abandon())
        except Exception:  # the cancellation is what the caller asked for; report, do not replace it
            log.warning("could not stop an abandoned cell", exc_info=True)
        raise


async def _drive(
    link: KernelLink, code: str, result: Execution, collector: OutputCollector, timeout: float | None, grace: float, on_output: OutputHook | None
) -> Execution:
    loop = asyncio.get_running_loop()
    await link.send(code)
    deadline = loop.time() + timeout if timeout else None
    interrupted = False
    reply: dict[str, Any] | None = None
    while True:
        if link.aborted:
            await link.abandon()
            return _died(result, collector, link.aborted)
        wait = link.poll_seconds if deadline is None else max(0.0, min(link.poll_seconds, deadline - loop.time()))
        try:
            msg = await link.receive(wait)
        except KernelGone as gone:
            return _died(result, collector, gone.why)
        if msg is None:
            why = await link.probe()
            if why:
                return _died(result, collector, why)
        else:
            kind = msg["header"]["msg_type"]
            if kind == "status":
                if msg["content"].get("execution_state") == "idle":
                    break
            elif kind == "execute_reply":
                reply = msg
            else:
                chunk = collector.handle(msg)
                if chunk is not None:
                    await run_hook(on_output, chunk)
        if deadline is not None and loop.time() >= deadline:
            if interrupted:  # the cell ignored the interrupt: restart, state is lost
                await link.restart()
                return _timed_out(result, collector, timeout, restarted=True)
            await link.interrupt()
            interrupted = True
            deadline = loop.time() + grace + link.interrupt_latency
    if interrupted:
        return _timed_out(result, collector, timeout, restarted=False)
    if reply is None:
        reply = await link.reply(REPLY_SECONDS)
    _collect(result, collector)
    content = reply["content"] if reply else {}
    status = content.get("status", "ok")
    if collector.error is not None or status == "error":
        result.status = "error"
        result.error = collector.error or ExecutionError(content.get("ename", "Error"), content.get("evalue", ""), content.get("traceback", []))
    elif status == "aborted":
        result.status = "error"
        result.error = ExecutionError("Aborted", "the kernel aborted this cell")
    return result


def _collect(result: Execution, collector: OutputCollector) -> None:
    result.outputs = collector.finish()
    result.execution_count = collector.execution_count
    result.truncated = collector.truncated
    result.displays = collector.displays()  # display ids a later cell may update (the notebook engine uses them)
    result.finished = _now()


def _died(result: Execution, collector: OutputCollector, why: str) -> Execution:
    _collect(result, collector)
    result.status = "died"
    result.error = ExecutionError("KernelDied", f"{why} while running this cell; call restart() to continue")
    return result


def _timed_out(result: Execution, collector: OutputCollector, timeout: float | None, *, restarted: bool) -> Execution:
    _collect(result, collector)
    result.status = "timeout"
    note = "; the kernel ignored the interrupt and was restarted, so its state is lost" if restarted else ""
    result.error = ExecutionError("ExecutionTimeout", f"the cell ran past its {timeout:g}s timeout and was interrupted{note}")
    return result
