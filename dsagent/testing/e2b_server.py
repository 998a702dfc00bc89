"""E2B's two in-sandbox servers on loopback, with real ipykernels and commands behind them.

The ``e2b`` backend talks to a sandbox through ``e2b-code-interpreter``'s
``AsyncSandbox``. With ``E2B_DEBUG=true`` the SDK skips the control plane
(create, kill and set_timeout become no-ops and the sandbox id is fixed) and
talks straight to ``localhost:49999`` (the code interpreter) and
``localhost:49983`` (envd). This module serves both, behaving as E2B's own do
wherever dsagent or a user of the SDK depends on it (``docs/architecture.md``,
"How a cell runs on the `e2b` backend", has the table of behaviours: what
E2B's server does, where it is written, what this one does):

- code interpreter (port 49999; ``e2b_contexts.py``): ``GET /health``,
  ``POST /execute`` (JSON lines: ``stdout``, ``stderr``, ``result``,
  ``error``, ``number_of_executions``, ``keepalive``, ``end_of_execution``),
  ``POST/GET /contexts``, ``POST /contexts/{id}/restart``,
  ``DELETE /contexts/{id}``; a client that closes ``/execute`` mid-cell
  interrupts the kernel; Python only (another ``language`` is refused in the
  words E2B's server uses for a kernel its sandbox does not have);
- envd (port 49983; ``e2b_envd.py``, ``e2b_processes.py``): ``GET /health``,
  ``GET /envs``, ``GET/POST /files`` (octet-stream and multipart uploads),
  the Connect services ``filesystem.Filesystem`` and ``process.Process``.

The sandbox's filesystem is the folder ``root`` (``/home/user/x`` is
``root/home/user/x``); kernels and commands run inside a mount namespace that
shows it at those paths (``e2b_view.py``), so ``os.getcwd()`` says
``/home/user/...`` as in a sandbox. It is one sandbox (debug mode has one id);
``expire()`` makes every later request answer as E2B's proxy does for a
sandbox that timed out (502 "... was not found") and drops the kernels.

Run one by hand: ``python -m dsagent.testing.e2b_server --root /tmp/sbx``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import uvicorn
from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process.process_connect import ProcessASGIApplication
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dsagent.settings import Settings
from dsagent.testing.e2b_contexts import END, KernelContext, Kernels, RestartRefused, normalize_language, start_context
from dsagent.testing.e2b_envd import FilesystemService, download, upload
from dsagent.testing.e2b_processes import ProcessService
from dsagent.testing.e2b_view import KERNEL_HOME, SANDBOX_HOME, SandboxView

__all__ = ["CODE_PORT", "ENVD_PORT", "KEEPALIVE_SECONDS", "SANDBOX_HOME", "E2BLoopbackServer"]

log = logging.getLogger(__name__)

CODE_PORT = 49999  # e2b_code_interpreter.constants.JUPYTER_PORT
ENVD_PORT = 49983  # e2b.connection_config.ConnectionConfig.envd_port
#: E2B's server writes a keepalive line after this many seconds without output
KEEPALIVE_SECONDS = 5.0
#: how often Jupyter's restarter looks for a dead kernel (jupyter_client's KernelRestarter.time_to_dead)
RESTARTER_SECONDS = 3.0
NOT_FOUND_502 = "The sandbox debug_sandbox_id was not found"
#: the kernel config E2B's template puts in root's IPython profile: plain tracebacks, sequences shown whole
KERNEL_CONFIG = 'c = get_config()  # noqa\nc.InteractiveShell.colors = "NoColor"\nc.PlainTextFormatter.max_seq_length = 0\n'
STARTUP_SCRIPT = Path(__file__).with_name("e2b_kernel_startup.py")


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class E2BLoopbackServer:
    """Both servers of one loopback sandbox; ``start()`` runs them in a thread of their own.

    ``envs`` are the sandbox's env vars (what envd's ``/envs`` answers: in a real
    sandbox, those given at its creation, which debug mode skips).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        settings: Settings | None = None,
        host: str = "127.0.0.1",
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        restarter_seconds: float = RESTARTER_SECONDS,
        envs: Mapping[str, str] | None = None,
        spare_kernels: int = 1,
    ) -> None:
        self.view = SandboxView(Path(root))
        self.root = self.view.root
        self.host = host
        self.settings = settings or Settings(kernel_pool_size=0)
        self.keepalive_seconds = keepalive_seconds
        self.restarter_seconds = restarter_seconds
        self.envs: dict[str, str] = dict(envs or {})
        self.spare_kernels = spare_kernels
        self.expired = False
        self.contexts: dict[str, KernelContext] = {}
        self._defaults: dict[str, str] = {}  # language -> id of its default context (made on first use)
        self._default_lock: asyncio.Lock | None = None
        self._kernels: Kernels | None = None
        self._closing: set[asyncio.Task[None]] = set()  # kernels of removed contexts, exiting
        self._files: FilesystemService | None = None
        self._processes: ProcessService | None = None
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
        problem = self.view.problem()
        if problem:
            raise RuntimeError(f"the loopback E2B server cannot show the sandbox's folders to its kernels: {problem}")
        self.view.make_folders()
        self._install_profile()
        self._thread = threading.Thread(target=self._run, name="e2b-loopback", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the loopback E2B server did not start: {self._error!r}")
        return self

    def _install_profile(self) -> None:
        """What E2B's template puts in root's IPython profile: the kernel config and the startup file of its result types."""
        profile = self.view.host_path(f"{KERNEL_HOME}/.ipython/profile_default")
        (profile / "startup").mkdir(parents=True, exist_ok=True)
        (profile / "ipython_kernel_config.py").write_text(KERNEL_CONFIG)
        (profile / "startup" / "00-e2b-loopback.py").write_text(STARTUP_SCRIPT.read_text(encoding="utf-8"), encoding="utf-8")

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
            asyncio.run_coroutine_threadsafe(self._drop_contexts(), self._loop).result(timeout=60)

    def revive(self) -> None:
        """Serve again after ``expire()`` (a fresh sandbox: no contexts)."""
        self.expired = False

    def created_contexts(self) -> list[str]:
        """Ids of the contexts a client created (not the default context of a language)."""
        defaults = set(self._defaults.values())
        return sorted(cid for cid in self.contexts if cid not in defaults)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._default_lock = asyncio.Lock()
        self._kernels = Kernels(self.view, self.settings, self.root.parent / f"{self.root.name}-logs", spare=self.spare_kernels)
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
            await asyncio.gather(*self._closing, return_exceptions=True)
            await self._kernels.close()
            if self._processes is not None:
                await self._processes.close()
            if self._files is not None:
                self._files.close()

    async def _drop_contexts(self) -> None:
        contexts, self.contexts = list(self.contexts.values()), {}
        self._defaults.clear()
        await asyncio.gather(*(ctx.close() for ctx in contexts), return_exceptions=True)

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

    async def _new_context(self, language: str | None, cwd: str | None) -> KernelContext | Response:
        name = normalize_language(language)
        if name != "python":
            # what E2B's server relays from Jupyter for a kernel the sandbox does not have (this one has only Python;
            # E2B's template also has javascript (typescript runs on it), r, bash and java)
            kernel = "javascript" if name == "typescript" else name
            missing = {"message": f"The '{kernel}' kernel is not available. Please pick another suitable kernel instead, or install that kernel.",
                       "short_message": f"{kernel} not found"}
            return PlainTextResponse(f"Failed to create context: {json.dumps(missing)}", status_code=500)
        assert self._kernels is not None
        context = await start_context(self._kernels, cwd or SANDBOX_HOME, self.envs, restarter_seconds=self.restarter_seconds)
        self.contexts[context.id] = context
        if not await context.change_dir(self.keepalive_seconds):
            return PlainTextResponse("Failed to set working directory", status_code=500)
        return context

    async def _create_context(self, request: Request) -> Response:
        if gone := self._gone():
            return gone
        body = await request.json()
        made = await self._new_context(body.get("language"), body.get("cwd"))
        return made if isinstance(made, Response) else JSONResponse(made.describe())

    async def _list_contexts(self, request: Request) -> Response:
        return self._gone() or JSONResponse([c.describe() for c in self.contexts.values()])

    async def _restart_context(self, request: Request) -> Response:
        if gone := self._gone():
            return gone
        context = self.contexts.get(request.path_params["context_id"])
        if context is None:
            return PlainTextResponse(f"Context {request.path_params['context_id']} not found", status_code=404)
        try:
            await context.restart()
        except RestartRefused as exc:
            return PlainTextResponse(str(exc), status_code=500)
        except Exception as exc:
            return PlainTextResponse(f"Failed to restart context {context.id}: {exc}", status_code=500)
        return JSONResponse(None)

    async def _remove_context(self, request: Request) -> Response:
        if gone := self._gone():
            return gone
        context = self.contexts.pop(request.path_params["context_id"], None)
        if context is None:
            return PlainTextResponse(f"Context {request.path_params['context_id']} not found", status_code=404)
        # the context is gone at once; its kernel's graceful exit (~0.3 s) goes on after the answer
        closing = asyncio.create_task(context.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        return JSONResponse(None)

    async def _default_context(self, language: str | None) -> KernelContext | Response:
        """The language's default context (E2B's server makes Python's and JavaScript's at start; this, on first use)."""
        name = normalize_language(language)
        assert self._default_lock is not None
        async with self._default_lock:
            known = self.contexts.get(self._defaults.get(name, ""))
            if known is not None:
                return known
            made = await self._new_context(name, SANDBOX_HOME)
            if isinstance(made, KernelContext):
                self._defaults[name] = made.id
            return made

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
            made = await self._default_context(body.get("language"))
            if isinstance(made, Response):
                return made
            context = made
        return StreamingResponse(self._stream(context, body["code"], body.get("env_vars") or {}))

    async def _stream(self, context: KernelContext, code: str, env_vars: dict[str, str]) -> AsyncIterator[str]:
        lines = context.execute(code, env_vars, self.keepalive_seconds)
        try:
            async for line in lines:
                if self.expired:  # a sandbox that goes away drops its connections mid-stream
                    raise ConnectionAbortedError("the sandbox expired while a cell ran")
                yield json.dumps(line) + "\n"
            if self.expired:
                raise ConnectionAbortedError("the sandbox expired while a cell ran")
            yield json.dumps(END) + "\n"
        finally:
            await lines.aclose()

    # -- envd ---------------------------------------------------------------------

    def _envd_app(self) -> Any:
        async def health(request: Request) -> Response:
            return self._gone() or Response(status_code=204)

        async def envs(request: Request) -> Response:
            return self._gone() or JSONResponse(self.envs)

        async def get_file(request: Request) -> Response:
            return await download(self, request)

        async def post_file(request: Request) -> Response:
            return await upload(self, request)

        plain = Starlette(
            routes=[
                Route("/health", health),
                Route("/envs", envs),
                Route("/files", get_file, methods=["GET"]),
                Route("/files", post_file, methods=["POST"]),
            ]
        )
        self._files = FilesystemService(self)
        self._processes = ProcessService(self)
        rpc = {
            "/filesystem.Filesystem/": FilesystemASGIApplication(self._files),
            "/process.Process/": ProcessASGIApplication(self._processes),
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
