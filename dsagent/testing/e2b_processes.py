"""envd's ``process.Process`` Connect service for the loopback E2B server: commands inside the sandbox view.

Written here from envd's ``spec/envd/process/process.proto`` in e2b-dev/E2B
and the Python SDK's tests of it (``commands``: run, connect, send_stdin,
close_stdin, kill, list), not copied.

A command runs inside the sandbox view (``e2b_view``), in its ``cwd`` (the
user's home by default), with the sandbox's env vars and its own. It keeps
running when the client of ``Start`` goes away; ``Connect`` (by pid or tag)
streams its later output and its end; ``SendInput``, ``StreamInput`` and
``CloseStdin`` reach its stdin when it was started with ``stdin`` (unset means
on, as the spec says for older clients; the SDK sends off unless asked);
``SendSignal`` sends SIGTERM or SIGKILL to its process group. No PTY:
``Update`` and PTY input answer UNIMPLEMENTED. Commands run as this machine's
user, not E2B's ``user``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_pb
from e2b.envd.process.process_connect import Process
from protobuf import Oneof

from dsagent.testing.e2b_envd import rpc_user, user_home
from dsagent.testing.e2b_view import KERNEL_HOME

if TYPE_CHECKING:
    from dsagent.testing.e2b_server import E2BLoopbackServer

__all__ = ["ProcessService"]

_KEEPALIVE_SECONDS = 30.0


def _event(kind: str, value: Any) -> process_pb.ProcessEvent:
    return process_pb.ProcessEvent(event=Oneof(kind, value))


class _Command:
    """One started command: its process, the streams listening to it, its end."""

    def __init__(self, process: asyncio.subprocess.Process, config: process_pb.ProcessConfig, tag: str | None) -> None:
        self.process = process
        self.pid = process.pid
        self.config = config
        self.tag = tag
        self.listeners: set[asyncio.Queue[process_pb.ProcessEvent | None]] = set()
        self.end: process_pb.ProcessEvent | None = None
        self.watcher = asyncio.create_task(self._watch())

    def _tell(self, event: process_pb.ProcessEvent | None) -> None:
        for queue in self.listeners:
            queue.put_nowait(event)

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        while chunk := await stream.read(32768):
            self._tell(_event("data", process_pb.ProcessEvent.DataEvent(output=Oneof(name, chunk))))

    async def _watch(self) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        await asyncio.gather(self._pump(self.process.stdout, "stdout"), self._pump(self.process.stderr, "stderr"))
        code = await self.process.wait()
        if code >= 0:
            end = process_pb.ProcessEvent.EndEvent(exit_code=code, exited=True, status=f"exit status {code}")
        else:
            end = process_pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=f"signal: {signal.Signals(-code).name.lower()[3:]}")
        self.end = _event("end", end)
        self._tell(self.end)
        self._tell(None)

    async def events(self, interval: float) -> AsyncIterator[process_pb.ProcessEvent]:
        """The start event, then what the command does from now on, until its end (keepalives between)."""
        queue: asyncio.Queue[process_pb.ProcessEvent | None] = asyncio.Queue()
        self.listeners.add(queue)
        try:
            yield _event("start", process_pb.ProcessEvent.StartEvent(pid=self.pid))
            if self.end is not None:
                yield self.end
                return
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), interval)
                except TimeoutError:
                    yield _event("keepalive", process_pb.ProcessEvent.KeepAlive())
                    continue
                if event is None:
                    return
                yield event
        finally:
            self.listeners.discard(queue)

    async def write(self, data: bytes) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            raise ConnectError(Code.FAILED_PRECONDITION, f"process {self.pid} has no open stdin (start it with stdin=True)")
        stdin.write(data)
        await stdin.drain()


class ProcessService(Process):
    """envd's ``process.Process`` service."""

    def __init__(self, server: E2BLoopbackServer) -> None:
        self.server = server
        self.commands: dict[int, _Command] = {}

    def _find(self, selector: process_pb.ProcessSelector | None) -> _Command:
        chosen = selector.selector if selector is not None else None
        for command in self.commands.values():
            if chosen is not None and command.end is None and (
                (chosen.field == "pid" and command.pid == chosen.value) or (chosen.field == "tag" and command.tag == chosen.value)
            ):
                return command
        raise ConnectError(Code.NOT_FOUND, f"process with {chosen.field if chosen else 'pid'} {chosen.value if chosen else ''} not found")

    async def start(self, request: process_pb.StartRequest, ctx: Any) -> AsyncIterator[process_pb.StartResponse]:
        config = request.process or process_pb.ProcessConfig()
        view = self.server.view
        home = user_home(rpc_user(ctx))
        cwd = config.cwd if config.has_field("cwd") and config.cwd else home
        if not view.host_path(cwd, home).is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd}' does not exist or is not a directory")
        user = "root" if home == KERNEL_HOME else "user"
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": os.environ.get("LANG", "C.UTF-8"), "HOME": home, "USER": user}
        env.update(self.server.envs)
        env.update(dict(config.envs))
        keep_stdin = request.stdin if request.has_field("stdin") else True
        argv = view.command([config.cmd, *config.args], posixpath.normpath(posixpath.join(home, cwd)), new_session=False)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.PIPE if keep_stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"cannot start {config.cmd}: {exc}") from exc
        command = self.commands[process.pid] = _Command(process, config, request.tag if request.has_field("tag") else None)
        command.watcher.add_done_callback(lambda _: self.commands.pop(command.pid, None))
        async for event in command.events(self._interval(ctx)):
            yield process_pb.StartResponse(event=event)

    async def connect(self, request: process_pb.ConnectRequest, ctx: Any) -> AsyncIterator[process_pb.ConnectResponse]:
        command = self._find(request.process)
        async for event in command.events(self._interval(ctx)):
            yield process_pb.ConnectResponse(event=event)

    @staticmethod
    def _interval(ctx: Any) -> float:
        return float(ctx.request_headers.get("keepalive-ping-interval") or _KEEPALIVE_SECONDS)

    async def list(self, request: process_pb.ListRequest, ctx: Any) -> process_pb.ListResponse:
        return process_pb.ListResponse(
            processes=[process_pb.ProcessInfo(config=c.config, pid=c.pid, tag=c.tag) for c in self.commands.values() if c.end is None]
        )

    async def send_input(self, request: process_pb.SendInputRequest, ctx: Any) -> process_pb.SendInputResponse:
        await self._input(self._find(request.process), request.input)
        return process_pb.SendInputResponse()

    async def stream_input(self, request: AsyncIterator[process_pb.StreamInputRequest], ctx: Any) -> process_pb.StreamInputResponse:
        command: _Command | None = None
        async for message in request:
            event = message.event
            if event is None or event.field == "keepalive":
                continue
            if event.field == "start":
                command = self._find(event.value.process)
            elif command is None:
                raise ConnectError(Code.FAILED_PRECONDITION, "the input stream must start with a start event")
            else:
                await self._input(command, event.value.input)
        return process_pb.StreamInputResponse()

    @staticmethod
    async def _input(command: _Command, given: process_pb.ProcessInput | None) -> None:
        kind = given.input if given is not None else None
        if kind is None or kind.field != "stdin":
            raise ConnectError(Code.UNIMPLEMENTED, "the loopback envd has no PTY: send stdin")
        await command.write(kind.value)

    async def close_stdin(self, request: process_pb.CloseStdinRequest, ctx: Any) -> process_pb.CloseStdinResponse:
        command = self._find(request.process)
        if command.process.stdin is not None:
            command.process.stdin.close()
        return process_pb.CloseStdinResponse()

    async def send_signal(self, request: process_pb.SendSignalRequest, ctx: Any) -> process_pb.SendSignalResponse:
        command = self._find(request.process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, request.signal.value or signal.SIGKILL)
        return process_pb.SendSignalResponse()

    async def update(self, request: process_pb.UpdateRequest, ctx: Any) -> process_pb.UpdateResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "the loopback envd has no PTY to resize")

    async def close(self) -> None:
        for command in list(self.commands.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(command.pid, signal.SIGKILL)
        await asyncio.gather(*(c.watcher for c in self.commands.values()), return_exceptions=True)
