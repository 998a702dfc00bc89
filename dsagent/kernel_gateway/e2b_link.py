"""The execute loop's view of an E2B kernel (``E2BLink``): the SDK's streamed callbacks, queued as iopub-shaped messages.

The link owns everything about the cell's ``/execute`` stream: the running
stream, cutting it off, and finding out when the kernel is free again. What it
needs of its session (the sandbox and code context of the moment, a restart,
why a failed request failed) is the small ``LinkHost`` protocol, so this
module does not import ``e2b.py``, which builds on it.

How E2B's code interpreter behaves here (e2b-dev/code-interpreter,
``template/server/messaging.py``): it has no interrupt call, but interrupts
the kernel when the client of ``/execute`` goes away; it runs one request per
context at a time and sends the next one to the kernel as soon as the
interrupt is sent, often while the interrupted cell is still ending; ipykernel
then *aborts* that request (it was queued behind an error), and the server,
which waits for an ``execute_input`` that an aborted request never gets, never
ends its stream. So after an interrupt the link asks with empty probe cells,
each cut off after ``probe_seconds`` (a cut-off probe is harmless: interrupting
an idle kernel does nothing), until one ends: that is the interrupted cell's end.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from e2b_code_interpreter import AsyncSandbox, Context
from e2b_code_interpreter import ExecutionError as E2BExecutionError

from dsagent.errors import KernelStartFailed
from dsagent.kernel_gateway.e2b_translate import result_output, translate_error
from dsagent.kernel_gateway.execute_loop import KernelGone, KernelLink
from dsagent.kernel_gateway.hidden_cell import HIDE_THIS_CELL

__all__ = ["DEATH_NAMES", "PROBE_SECONDS", "E2BLink", "LinkHost"]

#: the code interpreter's error names for a kernel that went away mid-cell
DEATH_NAMES = {"ContextRestarting", "UnexpectedEndOfExecution", "WebSocketError"}
#: how long one empty probe cell may take before it is cut off and sent again (a few network round trips)
PROBE_SECONDS = 1.0
#: how long after cutting a stream off the first probe is sent: the server interrupts the kernel and the
#: interrupted cell ends in this time, so the first probe is not queued behind it (and aborted)
PROBE_DELAY = 0.2
#: what a cell cut off by a caller that gave up is followed by, when its kernel had to be restarted
RESTARTED_NOTE = "[dsagent: the previous cell did not stop when interrupted; the kernel was restarted, so its state is lost]\n"

_IDLE = {"header": {"msg_type": "status"}, "parent_header": {}, "content": {"execution_state": "idle"}}


class LinkHost(Protocol):
    """What the link needs of its session."""

    @property
    def sandbox(self) -> AsyncSandbox: ...

    @property
    def context(self) -> Context: ...

    @property
    def sandbox_id(self) -> str: ...

    async def restart_context(self) -> None:
        """A fresh kernel in the session's work dir, with its env."""

    async def gone_why(self, exc: Exception) -> str:
        """Why a cell's request failed, when the sandbox or kernel is gone; raises anything else."""


class E2BLink(KernelLink):
    """The execute loop's view of an E2B kernel: the SDK's streamed callbacks, queued as iopub-shaped messages.

    The stream's end is the kernel going idle; the code interpreter reports the
    execution count at the end (``count``). Liveness comes from the stream
    itself: a dropped stream is checked against the sandbox, a kernel that died
    (E2B's Jupyter restarts it) is reported in it.
    """

    poll_seconds = 1.0
    #: the template's server notices a closed stream at once (Starlette listens for the disconnect)
    interrupt_latency = 0.0

    def __init__(self, host: LinkHost, *, probe_seconds: float = PROBE_SECONDS) -> None:
        super().__init__()
        self._host = host
        self.probe_seconds = probe_seconds
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._deaths: list[E2BExecutionError] = []
        self._failure: Exception | None = None
        #: the SDK's /execute stream of the cell running now
        self.running: asyncio.Task[Any] | None = None
        #: the probes that wait for the kernel to be free after an interrupt
        self.after_cut_off: asyncio.Task[None] | None = None
        #: a cell was cut off without waiting for its end: the next cell settles the kernel first
        self.unsettled = False
        #: said on the next cell's stderr
        self.note = ""
        #: the execution count the code interpreter reported at the end of the cell (None: unknown)
        self.count: int | None = None
        #: the last cell's count, to number a result before the stream's end tells it (None: unknown)
        self.last_count: int | None = 0

    def _put(self, msg_type: str, content: dict[str, Any]) -> None:
        self._queue.put_nowait({"header": {"msg_type": msg_type}, "parent_header": {}, "content": content})

    def _on_error(self, err: E2BExecutionError) -> None:
        if err.name in DEATH_NAMES:
            self._deaths.append(err)
            return
        self._put("error", {"ename": err.name, "evalue": err.value, "traceback": [err.traceback] if err.traceback else []})

    async def send(self, code: str) -> None:
        host = self._host
        self._queue = asyncio.Queue()
        self._deaths, self._failure, self.count = [], None, None
        predicted = self.last_count + 1 if self.last_count is not None else None
        if self.note:
            self._put("stream", {"name": "stderr", "text": self.note})
            self.note = ""
        run = host.sandbox.run_code(
            code,
            context=host.context,
            on_stdout=lambda m: self._put("stream", {"name": "stdout", "text": m.line}),
            on_stderr=lambda m: self._put("stream", {"name": "stderr", "text": m.line}),
            on_result=lambda r: self._put(*result_output(r, predicted)),
            on_error=self._on_error,
            timeout=0,  # the execute loop owns the deadline
        )
        self.running = asyncio.ensure_future(run)
        self.running.add_done_callback(self._stream_ended)

    def _stream_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():  # cut off: the probe after it says when the cell ended
            return
        exc = task.exception()
        if exc is not None:
            self._failure = exc
        else:
            self.count = task.result().execution_count
        self._queue.put_nowait(None)

    async def receive(self, wait: float) -> dict[str, Any] | None:
        try:
            msg = self._queue.get_nowait() if not self._queue.empty() else await asyncio.wait_for(self._queue.get(), wait)
        except TimeoutError:
            return None
        if msg is not None:
            return msg
        if self._failure is not None:
            raise KernelGone(await self._host.gone_why(self._failure))
        if self._deaths:
            raise KernelGone(self._death_why(self._deaths[0]))
        return _IDLE

    def _death_why(self, death: E2BExecutionError) -> str:
        where = f"sandbox {self._host.sandbox_id}"
        if death.name == "ContextRestarting":
            return f"the kernel in {where} died and E2B restarted it, so its variables are gone"
        return f"the code interpreter in {where} lost the kernel ({death.name}: {death.value})"

    async def probe(self) -> str:
        return ""  # the stream reports a restarted kernel, and a dropped stream is checked in receive

    # -- interrupting ------------------------------------------------------------------

    async def cut_off(self) -> None:
        """Close the running ``/execute`` stream; the code interpreter then interrupts the kernel."""
        running = self.running
        if running is not None and not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        self.unsettled = True
        self.last_count = None

    async def until_free(self, limit: float | None, *, first_delay: float = PROBE_DELAY, code: str = "") -> bool:
        """Send probe cells (``code``: empty) until one ends (True) or ``limit`` seconds pass (False; None: no limit)."""
        loop = asyncio.get_running_loop()
        end = None if limit is None else loop.time() + limit
        await asyncio.sleep(first_delay if end is None else min(first_delay, limit or 0))
        while end is None or loop.time() < end:
            wait = self.probe_seconds if end is None else min(self.probe_seconds, end - loop.time())
            probe = asyncio.ensure_future(self._host.sandbox.run_code(code, context=self._host.context, timeout=0))
            done, _ = await asyncio.wait({probe}, timeout=max(wait, 0.0))
            if done:
                count = probe.result().execution_count  # a failed request (sandbox gone) raises
                if count is not None:  # an empty (or hidden) cell shows the number the next cell gets
                    self.last_count = count - 1
                self.unsettled = False
                return True
            probe.cancel()  # aborted behind the interrupted cell, or still queued: ask again
            await asyncio.gather(probe, return_exceptions=True)
        return False

    async def until_answering(self, limit: float) -> None:
        """After a restart: empty probe cells until one ends, or ``KernelStartFailed``.

        E2B's server may never end the first cell after restarting a kernel that
        was busy: Jupyter Server does not nudge a kernel it still has as busy, so
        the cell's messages can go out before the new connection listens. The
        probes hide themselves: E2B's server puts the sandbox's env vars (envd's
        ``/envs``) in front of the first cell after a restart, and such a cell
        would take the user's execution count 1.
        """
        try:
            answered = await self.until_free(limit, first_delay=0.0, code=HIDE_THIS_CELL)
        except Exception as exc:
            raise translate_error(exc, "restarting the kernel", self._host.sandbox_id) from exc
        if not answered:
            raise KernelStartFailed(
                f"the restarted kernel in E2B sandbox {self._host.sandbox_id} did not answer within {limit:g}s",
                hint="call restart() again; if it keeps failing, start a new session",
                kernel_name="e2b",
                reason="restart_unanswered",
            )

    async def interrupt(self) -> None:
        running = self.running
        if running is None or running.done():
            return
        await self.cut_off()
        self.after_cut_off = asyncio.ensure_future(self._wait_until_free(self._queue))

    async def _wait_until_free(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        try:
            await self.until_free(None)  # the execute loop restarts the kernel at its deadline
        except Exception as exc:
            self._failure = exc
        else:  # what the interrupted cell would have shown, had its stream stayed open
            error = {"ename": "KeyboardInterrupt", "evalue": "interrupted", "traceback": []}
            queue.put_nowait({"header": {"msg_type": "error"}, "parent_header": {}, "content": error})
        queue.put_nowait(None)

    async def settle(self, grace: float) -> None:
        """Before a cell, after one cut off without waiting: wait until the kernel is free, else restart it (and say so)."""
        try:
            free = await self.until_free(grace)
        except Exception:
            free = False  # the probe's request failed: a fresh kernel is the way on
        if not free:
            await self._host.restart_context()
            self.note = RESTARTED_NOTE
        self.unsettled = False

    async def stop_waiting(self) -> None:
        task, self.after_cut_off = self.after_cut_off, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def restart(self) -> None:
        await self.stop_waiting()
        await self._host.restart_context()

    async def abandon(self) -> None:
        await self.stop_waiting()
        await self.cut_off()  # the next cell settles the kernel first

    async def close(self) -> None:
        """Stop the stream and the probes (the session is shutting down)."""
        for task in (self.running, self.after_cut_off):
            if task is not None and not task.done():
                task.cancel()
