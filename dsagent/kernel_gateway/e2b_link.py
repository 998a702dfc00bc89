"""The execute loop's view of an E2B kernel (``E2BLink``): the SDK's streamed callbacks, queued as iopub-shaped messages.

Split from ``e2b.py``, whose ``E2BSession`` owns the sandbox, the code context
and the state this link reads and updates (the last execution count, a note
for the next cell, the running ``/execute`` stream).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from e2b_code_interpreter import ExecutionError as E2BExecutionError

from dsagent.kernel_gateway.e2b_translate import result_output
from dsagent.kernel_gateway.execute_loop import KernelGone, KernelLink

if TYPE_CHECKING:
    from dsagent.kernel_gateway.e2b import E2BSession

__all__ = ["DEATH_NAMES", "SERVER_NOTICE_SECONDS", "E2BLink"]

#: the code interpreter's error names for a kernel that went away mid-cell
DEATH_NAMES = {"ContextRestarting", "UnexpectedEndOfExecution", "WebSocketError"}
#: seconds the code interpreter may take to notice a client that left (its keepalive period)
SERVER_NOTICE_SECONDS = 5.0

_IDLE = {"header": {"msg_type": "status"}, "parent_header": {}, "content": {"execution_state": "idle"}}


class E2BLink(KernelLink):
    """The execute loop's view of an E2B kernel: the SDK's streamed callbacks, queued as iopub-shaped messages.

    The stream's end is the kernel going idle. The SDK has no interrupt call;
    the code interpreter interrupts the kernel when the client of ``/execute``
    leaves, so an interrupt closes the stream and then sends an empty probe
    cell, which runs once the kernel is free: that is the interrupted cell's
    end (``interrupt_latency``: the server notices a client that left at its
    next keepalive write). Liveness comes from the stream itself: a dropped
    stream is checked against the sandbox, a restarted kernel is reported in it.
    """

    poll_seconds = 1.0
    interrupt_latency = SERVER_NOTICE_SECONDS

    def __init__(self, session: E2BSession) -> None:
        super().__init__()
        self._session = session
        self.interrupt_latency = session._backend.server_notice_seconds
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._deaths: list[E2BExecutionError] = []
        self._failure: Exception | None = None
        #: the probe that waits for the kernel to be free after an interrupt
        self.after_cut_off: asyncio.Task[None] | None = None
        #: the execution count the code interpreter reported at the end of the cell (None: unknown)
        self.count: int | None = None

    def _put(self, msg_type: str, content: dict[str, Any]) -> None:
        self._queue.put_nowait({"header": {"msg_type": msg_type}, "parent_header": {}, "content": content})

    def _on_error(self, err: E2BExecutionError) -> None:
        if err.name in DEATH_NAMES:
            self._deaths.append(err)
            return
        self._put("error", {"ename": err.name, "evalue": err.value, "traceback": [err.traceback] if err.traceback else []})

    async def send(self, code: str) -> None:
        session = self._session
        self._queue = asyncio.Queue()
        self._deaths, self._failure, self.count = [], None, None
        predicted = session._last_count + 1 if session._last_count is not None else None
        if session._note:
            self._put("stream", {"name": "stderr", "text": session._note})
            session._note = ""
        run = session._sandbox.run_code(
            code,
            context=session._context,
            on_stdout=lambda m: self._put("stream", {"name": "stdout", "text": m.line}),
            on_stderr=lambda m: self._put("stream", {"name": "stderr", "text": m.line}),
            on_result=lambda r: self._put(*result_output(r, predicted)),
            on_error=self._on_error,
            envs=session._env or None,
            timeout=0,  # the execute loop owns the deadline
        )
        session._running = asyncio.ensure_future(run)
        session._running.add_done_callback(self._stream_ended)

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
            raise KernelGone(await self._session._gone_why(self._failure))
        if self._deaths:
            death = self._deaths[0]
            raise KernelGone(f"the kernel in sandbox {self._session.sandbox_id} died ({death.name}: {death.value})")
        return _IDLE

    async def probe(self) -> str:
        return ""  # the stream reports a restarted kernel, and a dropped stream is checked in receive

    async def interrupt(self) -> None:
        session = self._session
        running = session._running
        if running is None or running.done():
            return
        await session._cut_off()
        session._unsettled = False  # the probe below waits for the kernel instead
        self.after_cut_off = asyncio.ensure_future(self._wait_until_free(self._queue))

    async def _wait_until_free(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        session = self._session
        try:
            await session._sandbox.run_code("", context=session._context, timeout=0)
        except Exception as exc:
            self._failure = exc
        else:  # what the interrupted cell would have shown, had its stream stayed open
            error = {"ename": "KeyboardInterrupt", "evalue": "interrupted", "traceback": []}
            queue.put_nowait({"header": {"msg_type": "error"}, "parent_header": {}, "content": error})
        queue.put_nowait(None)

    async def _stop_waiting(self) -> None:
        task, self.after_cut_off = self.after_cut_off, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def restart(self) -> None:
        await self._stop_waiting()
        await self._session._restart_context()

    async def abandon(self) -> None:
        await self._stop_waiting()
        await self._session._cut_off()  # the next cell settles the kernel first
