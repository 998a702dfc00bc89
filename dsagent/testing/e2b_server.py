"""E2B's two in-sandbox servers on loopback, backed by real local ipykernels.

The ``e2b`` backend talks to a sandbox through ``e2b-code-interpreter``'s
``AsyncSandbox``. With ``E2B_DEBUG=true`` the SDK skips the control plane
(create, kill and set_timeout become no-ops and the sandbox id is fixed) and
talks straight to ``localhost:49999`` (the code interpreter) and
``localhost:49983`` (envd). This module serves both, speaking the same wire
protocol as the real ones, so the real SDK and dsagent's translation code run:

code interpreter (port 49999), as in e2b-dev/code-interpreter ``template/server``:
  ``GET /health``; ``POST /execute`` streaming one JSON object per line
  (``stdout``, ``stderr``, ``result``, ``error``, ``number_of_executions``,
  ``keepalive``, ``end_of_execution``); ``POST/GET /contexts``,
  ``POST /contexts/{id}/restart``, ``DELETE /contexts/{id}``. A client that
  disconnects mid-execution interrupts the kernel, a kernel that dies is
  reported as the ``ContextRestarting`` error and restarted (what Jupyter's
  auto-restart does in the sandbox).

envd (port 49983):
  ``GET /health``, ``GET /envs``, ``GET /files`` (download) and ``POST /files``
  (``application/octet-stream`` upload only: multipart gets a 400), plus the
  Connect RPC services ``filesystem.Filesystem/ListDir``/``Stat`` and
  ``process.Process/Start``/``SendSignal``/``List`` through connectrpc's own
  ASGI applications and the SDK's generated stubs.

What differs from a real sandbox, on purpose: it is one sandbox (debug mode
has one id); the sandbox filesystem is the folder ``root`` (``/home/user/x``
is ``root/home/user/x``), but kernels and commands run on this machine, so
they see host paths (``os.getcwd()``) and the host's network; env vars passed
to ``/execute`` stay set after the cell (the real server unsets them);
``expire()`` makes every later request answer as E2B's proxy does for a
sandbox that timed out (502 "... was not found").

Run one by hand: ``python -m dsagent.testing.e2b_server --root /tmp/sbx``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import posixpath
import signal
import socket
import stat as stat_module
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.filesystem.filesystem_connect import Filesystem, FilesystemASGIApplication
from e2b.envd.process import process_pb
from e2b.envd.process.process_connect import Process, ProcessASGIApplication
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from dsagent.kernel_gateway.local import LocalBackend, LocalSession
from dsagent.kernel_gateway.models import Output
from dsagent.settings import Settings

__all__ = ["CODE_PORT", "ENVD_PORT", "SANDBOX_HOME", "E2BLoopbackServer"]

CODE_PORT = 49999  # e2b_code_interpreter.constants.JUPYTER_PORT
ENVD_PORT = 49983  # e2b.connection_config.ConnectionConfig.envd_port
SANDBOX_HOME = "/home/user"
KERNEL_HOME = "/root"  # Jupyter (and so each kernel) runs as root in the code-interpreter template
#: the real server writes a keepalive line every 5 s, and notices a client that went
#: away only when a write fails; 1 s here notices it sooner
KEEPALIVE_SECONDS = 1.0
NOT_FOUND_502 = "The sandbox debug_sandbox_id was not found"

# IPython result mime types -> the fields of the code interpreter's Result
_RESULT_FIELDS = {
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def result_line(output: Output) -> dict[str, Any]:
    """A kernel output as the code interpreter streams it (its quote-stripping included)."""
    kind = output["output_type"]
    if kind == "stream":
        return {"type": output["name"], "text": output["text"], "timestamp": time.time_ns()}
    if kind == "error":
        return {"type": "error", "name": output["ename"], "value": output["evalue"], "traceback": "".join(output["traceback"])}
    data = dict(output.get("data", {}))
    line: dict[str, Any] = {"type": "result", "is_main_result": kind == "execute_result"}
    text = data.pop("text/plain", None)
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    if text is not None:
        line["text"] = text
    for mime, name in _RESULT_FIELDS.items():
        if mime in data:
            line[name] = data.pop(mime)
    line["extra"] = data
    return line


@dataclass
class _Context:
    id: str
    cwd: str  # as the sandbox sees it
    session: LocalSession
    running: set[asyncio.Task[None]] = field(default_factory=set)  # cells being executed or queued

    async def stop_running(self) -> None:
        """Cancel the cells in flight (a restart or removal does not wait for a stuck cell)."""
        tasks = [task for task in self.running if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class E2BLoopbackServer:
    """Both servers of one fake sandbox; ``start()`` runs them in a thread of their own."""

    def __init__(
        self, root: str | Path, *, settings: Settings | None = None, host: str = "127.0.0.1", keepalive_seconds: float = KEEPALIVE_SECONDS
    ) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.settings = settings or Settings(kernel_pool_size=0)
        self.expired = False
        self.contexts: dict[str, _Context] = {}
        self.keepalive_seconds = keepalive_seconds
        self._default_id: str | None = None
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._backend: LocalBackend | None = None
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> E2BLoopbackServer:
        """Serve on 127.0.0.1:49999 and :49983; fails at once if either port is taken."""
        taken = [port for port in (CODE_PORT, ENVD_PORT) if port_in_use(port)]
        if taken:
            raise RuntimeError(
                f"port(s) {', '.join(map(str, taken))} on 127.0.0.1 are in use: E2B's debug mode has fixed ports, "
                "so only one loopback E2B server can run at a time (stop the other one, or another test run)"
            )
        (self.root / SANDBOX_HOME.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="e2b-loopback", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the loopback E2B server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> E2BLoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def expire(self) -> None:
        """From now on answer like E2B's proxy for a sandbox that timed out, and drop the kernels."""
        self.expired = True
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._drop_contexts(), self._loop).result(timeout=30)

    def revive(self) -> None:
        """Serve again after ``expire()`` (a fresh sandbox: no contexts)."""
        self.expired = False

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._backend = LocalBackend(self.settings, pool_size=0)
        apps = ((self._code_app(), CODE_PORT), (self._envd_app(), ENVD_PORT))
        self._servers = [
            uvicorn.Server(uvicorn.Config(app, host=self.host, port=port, log_level="warning", lifespan="off"))
            for app, port in apps
        ]
        tasks = [asyncio.create_task(server.serve()) for server in self._servers]
        while not all(server.started for server in self._servers):
            if any(task.done() for task in tasks):
                raise RuntimeError("uvicorn exited while starting")
            await asyncio.sleep(0.02)
        self._ready.set()
        try:
            await asyncio.gather(*tasks)
        finally:
            await self._drop_contexts()
            for process in self._processes.values():
                if process.returncode is None:
                    process.kill()

    async def _drop_contexts(self) -> None:
        contexts, self.contexts = list(self.contexts.values()), {}
        await asyncio.gather(*(ctx.stop_running() for ctx in contexts))
        await asyncio.gather(*(ctx.session.shutdown() for ctx in contexts), return_exceptions=True)

    # -- paths ----------------------------------------------------------------

    def host_path(self, path: str) -> Path:
        """Where a sandbox path lives on this machine; relative paths start at the sandbox home."""
        absolute = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
        return self.root / absolute.lstrip("/")

    def sandbox_path(self, host: Path) -> str:
        return "/" + host.resolve().relative_to(self.root).as_posix()

    def _gone(self) -> Response | None:
        if self.expired:
            return JSONResponse({"code": 502, "message": NOT_FOUND_502, "sandboxId": "debug_sandbox_id"}, status_code=502)
        return None

    # -- code interpreter -------------------------------------------------------

    def _code_app(self) -> Starlette:
        async def health(request: Request) -> Response:
            return self._gone() or JSONResponse("OK")

        return Starlette(
            routes=[
                Route("/health", health),
                Route("/execute", self._execute, methods=["POST"]),
                Route("/contexts", self._create_context, methods=["POST"]),
                Route("/contexts", self._list_contexts, methods=["GET"]),
                Route("/contexts/{context_id}/restart", self._restart_context, methods=["POST"]),
                Route("/contexts/{context_id}", self._remove_context, methods=["DELETE"]),
            ]
        )

    async def _new_context(self, cwd: str) -> _Context:
        assert self._backend is not None
        # the code-interpreter template runs Jupyter as root: kernels read root's
        # IPython profile, so startup files uploaded there run, as in a real sandbox
        home = self.host_path(KERNEL_HOME)
        env = {"HOME": str(home), "IPYTHONDIR": str(home / ".ipython")}
        folder = self.host_path(cwd)
        folder.mkdir(parents=True, exist_ok=True)
        session = await self._backend.start_session(work_dir=folder, env=env)
        context = _Context(uuid.uuid4().hex, posixpath.normpath(posixpath.join(SANDBOX_HOME, cwd)), session)
        self.contexts[context.id] = context
        return context

    @staticmethod
    def _context_json(context: _Context) -> dict[str, str]:
        return {"id": context.id, "language": "python", "cwd": context.cwd}

    async def _create_context(self, request: Request) -> Response:
        if gone := self._gone():
            return gone
        body = await request.json()
        if (body.get("language") or "python").lower() != "python":
            return PlainTextResponse("the loopback server runs Python contexts only", status_code=500)
        return JSONResponse(self._context_json(await self._new_context(body.get("cwd") or SANDBOX_HOME)))

    async def _list_contexts(self, request: Request) -> Response:
        return self._gone() or JSONResponse([self._context_json(c) for c in self.contexts.values()])

    async def _restart_context(self, request: Request) -> Response:
        if gone := self._gone():
            return gone
        context = self.contexts.get(request.path_params["context_id"])
        if context is None:
            return PlainTextResponse(f"Context {request.path_params['context_id']} not found", status_code=404)
        await context.stop_running()
        await context.session.restart()
        return JSONResponse(None)

    async def _remove_context(self, request: Request) -> Response:
        if gone := self._gone():
            return gone
        context = self.contexts.pop(request.path_params["context_id"], None)
        if context is None:
            return PlainTextResponse(f"Context {request.path_params['context_id']} not found", status_code=404)
        await context.stop_running()
        await context.session.shutdown()
        return JSONResponse(None)

    async def _execute(self, request: Request) -> Response:
        if gone := self._gone():
            return gone
        body = await request.json()
        if body.get("context_id") and body.get("language"):
            return PlainTextResponse("Only one of context_id or language can be provided", status_code=400)
        if body.get("context_id"):
            context = self.contexts.get(body["context_id"])
            if context is None:
                return PlainTextResponse(f"Context {body['context_id']} not found", status_code=404)
        else:
            context = self.contexts.get(self._default_id or "") or await self._new_context(SANDBOX_HOME)
            self._default_id = context.id
        code = body["code"]
        env_vars = body.get("env_vars") or {}
        if env_vars:  # as the real server does: set them in the same cell, before the code
            code = f"import os; os.environ.update({dict(env_vars)!r})\n{code}"
        return StreamingResponse(self._execution_lines(context, code))

    async def _execution_lines(self, context: _Context, code: str) -> AsyncIterator[str]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def run() -> None:
            try:
                result = await context.session.execute(code, timeout=None, on_output=lambda out: queue.put_nowait(result_line(out)))
                if result.status == "died":
                    # in a sandbox Jupyter restarts the dead kernel and the server reports it so
                    queue.put_nowait({"type": "error", "name": "ContextRestarting", "value": "Context was restarted", "traceback": ""})
                    await context.session.restart()
                if result.execution_count is not None:
                    queue.put_nowait({"type": "number_of_executions", "execution_count": result.execution_count})
            except Exception as exc:  # the real server's WebSocketError, in spirit
                queue.put_nowait({"type": "error", "name": "WebSocketError", "value": repr(exc), "traceback": ""})
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run())
        context.running.add(task)
        task.add_done_callback(context.running.discard)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.keepalive_seconds)
                except TimeoutError:
                    yield json.dumps({"type": "keepalive"}) + "\n"
                    continue
                if item is None:
                    break
                yield json.dumps(item) + "\n"
            if self.expired:  # a sandbox that goes away drops its connections mid-stream
                raise ConnectionAbortedError("the sandbox expired while a cell ran")
            yield '{"type": "end_of_execution"}\n'
        except BaseException:
            # the client went away mid-cell: interrupt the kernel, as the real server does
            if not task.done() and await context.session.is_alive():
                await asyncio.shield(context.session.interrupt())
            raise

    # -- envd ---------------------------------------------------------------------

    def _envd_app(self) -> Any:
        async def health(request: Request) -> Response:
            return self._gone() or Response(status_code=204)

        async def envs(request: Request) -> Response:
            return self._gone() or JSONResponse({})

        plain = Starlette(
            routes=[
                Route("/health", health),
                Route("/envs", envs),
                Route("/files", self._download, methods=["GET"]),
                Route("/files", self._upload, methods=["POST"]),
            ]
        )
        rpc = {
            "/filesystem.Filesystem/": FilesystemASGIApplication(_FilesystemService(self)),
            "/process.Process/": ProcessASGIApplication(_ProcessService(self)),
        }

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and self.expired:
                await self._gone()(scope, receive, send)  # type: ignore[misc]
                return
            for prefix, rpc_app in rpc.items():
                if scope["type"] == "http" and scope["path"].startswith(prefix):
                    await rpc_app(scope, receive, send)
                    return
            await plain(scope, receive, send)

        return app

    def _file_param(self, request: Request) -> Path | Response:
        path = request.query_params.get("path")
        if not path:
            return JSONResponse({"code": 400, "message": "path is required"}, status_code=400)
        return self.host_path(path)

    async def _download(self, request: Request) -> Response:
        target = self._file_param(request)
        if isinstance(target, Response):
            return target
        if not target.exists():
            return JSONResponse({"code": 404, "message": f"path '{request.query_params['path']}' does not exist"}, status_code=404)
        if target.is_dir():
            return JSONResponse({"code": 400, "message": "path is a directory"}, status_code=400)
        data = await asyncio.to_thread(target.read_bytes)
        return Response(data, media_type="application/octet-stream")

    async def _upload(self, request: Request) -> Response:
        target = self._file_param(request)
        if isinstance(target, Response):
            return target
        if request.headers.get("content-type", "").split(";")[0] != "application/octet-stream":
            return JSONResponse({"code": 400, "message": "the loopback envd takes application/octet-stream uploads only"}, status_code=400)
        data = await request.body()
        target.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(target.write_bytes, data)
        return JSONResponse([{"name": target.name, "type": "file", "path": self.sandbox_path(target)}])


class _FilesystemService(Filesystem):
    """envd's ``filesystem.Filesystem`` service: the calls the SDK makes for ``files.list``/``make_dir``/``get_info``; the rest answer UNIMPLEMENTED."""

    def __init__(self, server: E2BLoopbackServer) -> None:
        self.server = server

    def _entry(self, path: Path) -> filesystem_pb.EntryInfo:
        st = path.lstat()
        kind = filesystem_pb.FileType.DIRECTORY if stat_module.S_ISDIR(st.st_mode) else filesystem_pb.FileType.FILE
        return filesystem_pb.EntryInfo(
            name=path.name,
            type=kind,
            path=self.server.sandbox_path(path),
            size=st.st_size,
            mode=st.st_mode & 0o7777,
            permissions=stat_module.filemode(st.st_mode),
            owner="user",
            group="user",
            modified_time=Timestamp.from_datetime(datetime.fromtimestamp(st.st_mtime, UTC)),
        )

    async def stat(self, request: filesystem_pb.StatRequest, ctx: Any) -> filesystem_pb.StatResponse:
        target = self.server.host_path(request.path)
        if not target.exists():
            raise ConnectError(Code.NOT_FOUND, f"path '{request.path}' does not exist")
        return filesystem_pb.StatResponse(entry=self._entry(target))

    async def make_dir(self, request: filesystem_pb.MakeDirRequest, ctx: Any) -> filesystem_pb.MakeDirResponse:
        target = self.server.host_path(request.path)
        if target.exists():
            raise ConnectError(Code.ALREADY_EXISTS, f"path '{request.path}' already exists")
        target.mkdir(parents=True)
        return filesystem_pb.MakeDirResponse(entry=self._entry(target))

    async def list_dir(self, request: filesystem_pb.ListDirRequest, ctx: Any) -> filesystem_pb.ListDirResponse:
        base = self.server.host_path(request.path)
        if not base.exists():
            raise ConnectError(Code.NOT_FOUND, f"path '{request.path}' does not exist")
        if not base.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"path '{request.path}' is not a directory")
        entries: list[filesystem_pb.EntryInfo] = []

        def walk(folder: Path, level: int) -> None:
            for child in sorted(folder.iterdir()):
                entries.append(self._entry(child))
                if child.is_dir() and not child.is_symlink() and (request.depth == 0 or level < request.depth):
                    walk(child, level + 1)

        await asyncio.to_thread(walk, base, 1)
        return filesystem_pb.ListDirResponse(entries=entries)


class _ProcessService(Process):
    """envd's ``process.Process`` service: start a command and stream its output, signal it, list; the rest answer UNIMPLEMENTED."""

    def __init__(self, server: E2BLoopbackServer) -> None:
        self.server = server

    async def start(self, request: process_pb.StartRequest, ctx: Any) -> AsyncIterator[process_pb.StartResponse]:
        config = request.process or process_pb.ProcessConfig()
        home = self.server.host_path(SANDBOX_HOME)
        cwd = self.server.host_path(config.cwd) if config.has_field("cwd") and config.cwd else home
        env = {**os.environ, "HOME": str(home), **dict(config.envs)}
        try:
            process = await asyncio.create_subprocess_exec(
                config.cmd, *config.args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"cannot start {config.cmd}: {exc}") from exc
        self.server._processes[process.pid] = process
        queue: asyncio.Queue[process_pb.ProcessEvent | None] = asyncio.Queue()

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            while chunk := await stream.read(32768):
                queue.put_nowait(_event("data", process_pb.ProcessEvent.DataEvent(output=Oneof(name, chunk))))

        async def watch() -> None:
            assert process.stdout is not None and process.stderr is not None
            await asyncio.gather(pump(process.stdout, "stdout"), pump(process.stderr, "stderr"))
            code = await process.wait()
            status = f"exit status {code}" if code >= 0 else f"signal: {signal.Signals(-code).name.lower()[3:]}"
            end = process_pb.ProcessEvent.EndEvent(exit_code=code if code >= 0 else -1, exited=code >= 0, status=status)
            queue.put_nowait(_event("end", end))
            queue.put_nowait(None)

        watcher = asyncio.create_task(watch())
        try:
            yield process_pb.StartResponse(event=_event("start", process_pb.ProcessEvent.StartEvent(pid=process.pid)))
            while (event := await queue.get()) is not None:
                yield process_pb.StartResponse(event=event)
        finally:
            if process.returncode is None:  # the client went away: do not leave the command behind
                process.kill()
            await asyncio.shield(watcher)
            self.server._processes.pop(process.pid, None)

    async def send_signal(self, request: process_pb.SendSignalRequest, ctx: Any) -> process_pb.SendSignalResponse:
        selector = request.process.selector if request.process is not None else None
        process = self.server._processes.get(selector.value) if selector is not None and selector.field == "pid" else None
        if process is None or process.returncode is not None:
            raise ConnectError(Code.NOT_FOUND, "process not found")
        os.killpg(process.pid, request.signal.value or signal.SIGKILL)
        return process_pb.SendSignalResponse()

    async def list(self, request: process_pb.ListRequest, ctx: Any) -> process_pb.ListResponse:
        return process_pb.ListResponse(
            processes=[process_pb.ProcessInfo(pid=pid) for pid, p in self.server._processes.items() if p.returncode is None]
        )


def _event(kind: str, value: Any) -> process_pb.ProcessEvent:
    return process_pb.ProcessEvent(event=Oneof(kind, value))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve E2B's code interpreter and envd on loopback (for E2B_DEBUG=true).")
    parser.add_argument("--root", required=True, help="folder that holds the sandbox's filesystem")
    args = parser.parse_args(argv)
    with E2BLoopbackServer(args.root) as server:
        print(f"serving on 127.0.0.1:{CODE_PORT} (code) and :{ENVD_PORT} (envd); sandbox root {server.root}; Ctrl-C stops")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
