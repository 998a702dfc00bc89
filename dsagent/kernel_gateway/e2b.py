"""The ``e2b`` backend: kernels in E2B cloud sandboxes, through ``e2b-code-interpreter``'s ``AsyncSandbox``.

One session is one sandbox plus one code context (a Jupyter kernel in it) whose
cwd is the session's work dir in the sandbox. The code interpreter's streamed
results are translated into nbformat outputs by feeding them, shaped as iopub
messages, through the same ``OutputCollector`` every other backend uses.

Mapping of ``KernelSession`` semantics onto what E2B's code interpreter does
(e2b-dev/code-interpreter ``template/server``; docs/architecture.md has the
table):

- set-up: E2B's server starts a context's kernel in ``/home/user`` and moves
  it to the context's cwd only when the context is created; a restart (ours,
  or Jupyter's after the kernel died) leaves it in ``/home/user``. Its per-cell
  ``envs`` are pasted into the cell between single quotes. So after creating
  the context and after every restart, a hidden set-up cell (``setup_code``)
  moves the kernel into the work dir and sets ``env`` from a Python literal;
  ``env`` is never handed to E2B's own env mechanisms.
- timeout: the shared execute loop (``execute_loop.py``) owns the deadline; at
  it the ``/execute`` stream is closed, which makes the code interpreter
  interrupt the kernel; empty probe cells, each cut off after a second (a
  request sent while the interrupted cell is ending is aborted by ipykernel,
  and the server never ends that stream), find out when the kernel is free.
  If it is still busy after ``interrupt_grace`` the context is restarted and
  the result says the state is lost, as on every backend.
- interrupt: the same: cancel the running ``/execute`` stream (the SDK has no
  interrupt call). A cell whose caller was cancelled is settled the same way
  before the next cell, which says so if the kernel had to be restarted.
- kernel death: the sandbox's Jupyter restarts a dead kernel and the server
  reports ``ContextRestarting``: that is status ``died`` ("... E2B restarted
  it, so its variables are gone"), and as on ``local`` the session then wants
  ``restart()``.
- restart: ``restart_code_context`` (a fresh kernel) + the set-up cell; if the
  sandbox itself is gone, a new sandbox is created. E2B refuses a restart
  while its Jupyter restarts a dead kernel itself (tried again for a while),
  and the first cell after restarting a busy kernel may never end (probe
  cells go first: ``E2BLink.until_answering``).
- sandbox gone (timed out, killed): status ``died`` mid-cell, naming the sandbox.
- keep-alive: while a session is in use, the sandbox timeout is pushed forward
  (``set_timeout``) every third of ``e2b_timeout``.
- resume: ``start_session(sandbox_id=..., context_id=...)`` connects to a
  living sandbox and finds its context again, so a resumed agent run gets its
  variables back; ``session.detach()`` leaves the sandbox running for that.

``E2B_API_KEY`` is read by the SDK from the environment; dsagent never stores,
logs or shows it. With ``E2B_DEBUG=true`` the SDK talks to localhost
(``dsagent.testing.e2b_server`` serves that for the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2b import (
    CommandExitException,
    FileNotFoundException,
    NotFoundException,
    SandboxException,
)
from e2b_code_interpreter import AsyncSandbox, Context

from dsagent.errors import (
    DsagentError,
    FileAccessError,
    KernelDied,
    KernelStartFailed,
    SandboxServiceError,
    SessionClosed,
)
from dsagent.kernel_gateway.base import (
    KernelBackend,
    KernelSession,
    OutputHook,
)
from dsagent.kernel_gateway.e2b_translate import (
    API_KEY_VAR,
    E2B_MIME,
    STARTUP_CODE,
    STARTUP_FILE,
    STARTUP_USER,
    setup_code,
    translate_error,
)
from dsagent.kernel_gateway.e2b_link import E2BLink
from dsagent.kernel_gateway.execute_loop import restarting, run_cell
from dsagent.kernel_gateway.models import Execution, ExecutionError, FileInfo
from dsagent.settings import Settings

__all__ = ["E2B_MIME", "CommandResult", "E2BBackend", "E2BSession", "SandboxServiceError"]

log = logging.getLogger(__name__)

#: seconds the set-up cell of a new or restarted kernel may take
SETUP_SECONDS = 60.0
#: what E2B's server answers (500) to a restart while Jupyter is restarting a dead kernel itself
RESTART_REFUSED = "Failed to restart context"
#: how long such a restart is tried again, every RESTART_RETRY_PAUSE seconds
RESTART_RETRY_SECONDS = 30.0
RESTART_RETRY_PAUSE = 0.5

NO_KEY = (
    f"{API_KEY_VAR} is not set: the e2b backend needs an E2B API key "
    "(export E2B_API_KEY=..., from https://e2b.dev/dashboard), or E2B_DEBUG=true to use a local E2B server"
)


@dataclass(frozen=True)
class CommandResult:
    """What a shell command in the sandbox did; ``exit_code`` is None if it was killed at its timeout."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _debug() -> bool:
    return os.environ.get("E2B_DEBUG", "false").lower() == "true"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("localhost", port)) == 0


class E2BBackend(KernelBackend):
    """Sessions in E2B sandboxes; each session creates (or reconnects to) one sandbox."""

    name = "e2b"
    unsupported = {
        "external_kill": "the kernel runs inside a remote E2B sandbox, so this process cannot kill it by pid "
        "(a kernel killed from inside a cell is checked instead)",
        "clear_output": "E2B's execution stream carries stdout, stderr, results and errors only; "
        "clear_output() never reaches the client, so cleared output is kept",
        "display_update": "E2B's execution stream has no update_display_data: "
        "display(..., display_id=True).update() keeps the first value",
        "ipython_history": "E2B's template starts the kernel with its own IPython configuration (history in a "
        "file inside the sandbox), not nbclient's in-memory history",
        "death_recovery": "the kernel runs in a remote E2B sandbox whose template starts it; dsagent cannot make it keep "
        "a copy of its output, so what a dying kernel printed but never sent is lost",
        "death_reason": "E2B's stream says only that the context restarted; the signal and memory of the kernel's "
        "end stay inside the sandbox",
    }

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        template: str | None = None,
        timeout: int | None = None,
        metadata: Mapping[str, str] | None = None,
        api_params: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(settings, **options)
        self.template = template if template is not None else self.settings.e2b_template
        self.timeout = int(timeout if timeout is not None else self.settings.e2b_timeout)
        self.sessions_dir = self.settings.e2b_sessions_dir
        self.metadata = {"dsagent": "1", **(metadata or {})}
        #: extra ``ApiParams`` for the SDK (request_timeout, domain, api_url, debug ...); never the key
        self.api_params = dict(api_params or {})

    @classmethod
    def check(cls) -> str | None:
        if _debug():
            if all(_listening(port) for port in (49999, 49983)):
                return None
            return (
                "E2B_DEBUG=true, but no E2B server answers on localhost:49999 and :49983 "
                "(start one: python -m dsagent.testing.e2b_server --root DIR, or unset E2B_DEBUG)"
            )
        return None if os.environ.get(API_KEY_VAR) else NO_KEY

    def describe(self) -> dict[str, Any]:
        return {
            "template": self.template or f"{AsyncSandbox.default_template} (the SDK's default)",
            "timeout": f"{self.timeout}s (extended while a session is in use)",
            "sessions_dir": f"{self.sessions_dir}/ in the sandbox",
            "api_key": "set" if os.environ.get(API_KEY_VAR) else f"not set ({API_KEY_VAR})",
            "debug": "E2B_DEBUG=true: talks to localhost:49999/49983" if _debug() else "off",
        }

    async def start_session(
        self,
        *,
        work_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        sandbox_id: str | None = None,
        context_id: str | None = None,
    ) -> E2BSession:
        """A session in a new sandbox, or, with ``sandbox_id``, in a living one (its kernel state comes back).

        Reconnecting finds the kernel by ``context_id`` (``session.context_id``)
        or else by ``work_dir``; if neither is there any more, a new kernel is
        started and ``session.state_restored`` is False.
        """
        if not (_debug() or os.environ.get(API_KEY_VAR) or self.api_params.get("api_key")):
            raise SandboxServiceError(NO_KEY, hint=f"export {API_KEY_VAR}=... or pick another backend", name="e2b", reason="no_api_key", sandbox_id=None)
        env = _checked_env(env)
        if sandbox_id:
            return await self._reconnect(sandbox_id, context_id, work_dir, env)
        folder = self._sandbox_dir(work_dir)
        sandbox = await self._create_sandbox(folder)
        try:
            context = await _new_context(sandbox, folder, env)
        except BaseException:
            await _kill_quietly(sandbox)
            raise
        return E2BSession(self, sandbox, context, env, state_restored=False)

    def _sandbox_dir(self, work_dir: str | Path | None) -> str:
        if work_dir is None:
            return posixpath.join(self.sessions_dir, uuid.uuid4().hex[:12])
        return posixpath.normpath(posixpath.join("/home/user", str(work_dir)))

    async def _create_sandbox(self, folder: str) -> AsyncSandbox:
        # no envs here: E2B's server would paste them into every context's first cell between single quotes
        try:
            return await AsyncSandbox.create(
                template=self.template or None,
                timeout=self.timeout,
                metadata={**self.metadata, "dsagent_work_dir": folder},
                **self.api_params,
            )
        except Exception as exc:
            raise translate_error(exc, "creating an E2B sandbox") from exc

    async def _reconnect(self, sandbox_id: str, context_id: str | None, work_dir: str | Path | None, env: dict[str, str]) -> E2BSession:
        action = "reconnecting to the E2B sandbox"
        try:
            sandbox = await AsyncSandbox.connect(sandbox_id, timeout=self.timeout, **self.api_params)
            contexts = await sandbox.list_code_contexts()
        except Exception as exc:
            raise translate_error(exc, action, sandbox_id) from exc
        folder = self._sandbox_dir(work_dir) if work_dir is not None else None
        found = next((c for c in contexts if c.id == context_id), None) or next(
            (c for c in contexts if folder is not None and c.cwd == folder), None
        )
        if found is not None:
            return E2BSession(self, sandbox, found, env, state_restored=True)
        log.warning("sandbox %s has no kernel %s any more; starting a new one (variables are lost, files are kept)", sandbox_id, context_id)
        context = await _new_context(sandbox, folder or self._sandbox_dir(None), env)
        return E2BSession(self, sandbox, context, env, state_restored=False)


def _checked_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` as a dict, or a clear error for a name or value no process environment can hold."""
    checked = dict(env or {})
    for name, value in checked.items():
        problem = (
            "its name is empty or not text" if not isinstance(name, str) or not name
            else "its name holds '=' or a NUL character" if "=" in name or "\0" in name
            else "its value is not text" if not isinstance(value, str)
            else "its value holds a NUL character" if "\0" in value
            else ""
        )
        if problem:
            raise KernelStartFailed(
                f"cannot set the env var {name!r} in an E2B kernel: {problem}",
                hint="process environments hold text without NUL characters, and names without '='; fix the env mapping",
                kernel_name="e2b",
                reason="bad_env",
            )
    return checked


async def _new_context(sandbox: AsyncSandbox, folder: str, env: Mapping[str, str]) -> Context:
    """A fresh Python kernel in ``sandbox`` in the work dir ``folder`` (created if missing), with ``env``."""
    try:
        await sandbox.files.write(STARTUP_FILE, STARTUP_CODE.encode(), user=STARTUP_USER, use_octet_stream=True)
    except SandboxException as exc:  # a template without root's profile: str results lose their quotes
        log.warning("could not install the IPython startup file in sandbox %s: %s", sandbox.sandbox_id, exc)
    try:
        await sandbox.files.make_dir(folder)
        context = await sandbox.create_code_context(cwd=folder, language="python")
    except Exception as exc:
        raise translate_error(exc, "starting a kernel in the E2B sandbox", sandbox.sandbox_id) from exc
    await _set_up(sandbox, context, folder, env)
    return context


async def _set_up(sandbox: AsyncSandbox, context: Context, folder: str, env: Mapping[str, str]) -> None:
    """Move a new or restarted kernel into ``folder`` and set ``env`` (E2B's server does neither after a restart)."""
    try:
        done = await sandbox.run_code(setup_code(folder, env), context=context, timeout=SETUP_SECONDS)
    except Exception as exc:
        raise translate_error(exc, "preparing the kernel in the E2B sandbox", sandbox.sandbox_id) from exc
    if done.error is not None:
        raise KernelStartFailed(
            f"could not move the E2B kernel into its work dir {folder} and set its env: {done.error.name}: {done.error.value}",
            hint="check that the work dir exists in the sandbox; restart() tries again",
            kernel_name="e2b",
            reason=done.error.name,
        )


async def _kill_quietly(sandbox: AsyncSandbox) -> None:
    try:
        await sandbox.kill()
    except Exception:
        log.warning("could not kill E2B sandbox %s; it ends at its timeout", sandbox.sandbox_id, exc_info=True)


class E2BSession(KernelSession):
    """One kernel (code context) in one E2B sandbox; ``work_dir`` is a path inside the sandbox."""

    backend_name = "e2b"

    def __init__(
        self, backend: E2BBackend, sandbox: AsyncSandbox, context: Context, env: Mapping[str, str] | None, *, state_restored: bool
    ) -> None:
        self._backend = backend
        self._sandbox = sandbox
        self._context = context
        self._env = dict(env or {})
        #: True when this session reconnected to a kernel that kept its variables
        self.state_restored = state_restored
        self._lock = asyncio.Lock()
        self._closed = False
        self._dead = False
        self._gone = False  # the sandbox itself no longer exists
        self._link = E2BLink(self)
        if state_restored:
            self._link.last_count = None  # a reconnected kernel's count is told by its next cell
        self._extended_at = asyncio.get_running_loop().time()

    @property
    def work_dir(self) -> str:
        return self._context.cwd

    @property
    def sandbox_id(self) -> str:
        return self._sandbox.sandbox_id

    @property
    def sandbox(self) -> AsyncSandbox:
        return self._sandbox

    @property
    def context(self) -> Context:
        return self._context

    @property
    def context_id(self) -> str:
        return self._context.id

    @property
    def settings(self) -> Settings:
        return self._backend.settings

    def _check_usable(self) -> None:
        if self._closed:
            raise SessionClosed("this kernel session was shut down", hint="start a new session")
        if self._dead:
            raise KernelDied(
                f"the kernel of this session (sandbox {self.sandbox_id}) has died",
                hint="call restart() (state is lost)",
                kernel_name="e2b",
                outputs=[],
            )

    # -- keeping the sandbox alive ----------------------------------------------

    async def _extend(self) -> None:
        """Push the sandbox's end back to ``e2b_timeout`` from now."""
        try:
            await self._sandbox.set_timeout(self._backend.timeout)
            self._extended_at = asyncio.get_running_loop().time()
        except Exception:
            log.warning("could not extend the timeout of E2B sandbox %s", self.sandbox_id, exc_info=True)

    @contextlib.asynccontextmanager
    async def _in_use(self) -> AsyncIterator[None]:
        """Keep the sandbox alive while the block runs (a third of its timeout at a time)."""
        period = max(1.0, self._backend.timeout / 3)
        if asyncio.get_running_loop().time() - self._extended_at > period:
            await self._extend()

        async def keep_alive() -> None:
            while True:
                await asyncio.sleep(period)
                await self._extend()

        task = asyncio.create_task(keep_alive())
        try:
            yield
        finally:
            task.cancel()

    # -- code ------------------------------------------------------------------------

    async def execute(self, code: str, *, timeout: float | None = None, on_output: OutputHook | None = None) -> Execution:
        async with self._lock:
            self._check_usable()
            timeout = self.settings.execution_timeout if timeout is None else timeout
            link = self._link
            async with self._in_use():
                await link.stop_waiting()  # no probe of an earlier cell is left to wait behind
                if link.unsettled:
                    await link.settle(self.settings.interrupt_grace)
                previous = link.last_count
                result = await run_cell(
                    link, code, timeout=timeout, grace=self.settings.interrupt_grace, max_output_bytes=self.settings.max_output_bytes, on_output=on_output
                )
                await link.stop_waiting()
            count = link.count
            if count is not None:  # the code interpreter tells the count at the end of the stream
                link.last_count = result.execution_count = count
                for output in result.outputs:
                    if output["output_type"] == "execute_result":
                        output["execution_count"] = count
                if previous is not None and count < previous and result.status in ("ok", "error"):
                    self._restarted_before(result, previous)
            if result.status == "died":
                self._dead = True
            return result

    def _restarted_before(self, result: Execution, previous: int) -> None:
        """The kernel's count went back: E2B's Jupyter restarted it (it had died) between our cells.

        The cell ran, but in a fresh kernel in ``/home/user`` without the session's
        env. Reported as ``died``, as ``local`` reports a kernel that died between
        cells, so the caller restarts and re-runs what it needs. (A blank cell or
        a hidden set-up cell repeats a count; only a count below the previous
        one is a restart, so one right after a session's first cell goes unseen.)
        """
        result.status = "died"
        result.error = ExecutionError(
            "KernelDied",
            f"E2B restarted the kernel in sandbox {self.sandbox_id} before this cell (its execution count went back from "
            f"{previous} to {result.execution_count}): its variables are gone and the cell ran in /home/user, not in the work dir; "
            "call restart() to continue",
        )

    async def gone_why(self, exc: Exception) -> str:
        """Why a cell's request failed, when the sandbox or kernel is gone; anything else raises."""
        error = translate_error(exc, "running a cell", self.sandbox_id)
        running = await self._sandbox_state()
        kernel_gone = isinstance(exc, NotFoundException) or getattr(error, "reason", "") == "expired"
        if running is None or (running and not kernel_gone):
            raise error from exc  # unreachable (network) or a failure of the service: not the kernel's doing
        self._gone = not running
        if self._gone:
            return f"the E2B sandbox {self.sandbox_id} is gone (it reached its timeout or was killed)"
        return f"the kernel in sandbox {self.sandbox_id} is gone"

    async def _sandbox_state(self) -> bool | None:
        """Whether the sandbox runs; None when it cannot be reached to tell."""
        try:
            return await self._sandbox.is_running(request_timeout=10)
        except Exception:
            return None

    async def interrupt(self) -> None:
        self._check_usable()
        await self._link.interrupt()

    async def restart(self) -> None:
        if self._closed:
            raise SessionClosed("this kernel session was shut down", hint="start a new session")
        async with restarting(self._lock, self._link):
            await self._link.stop_waiting()
            await self.restart_context()

    async def restart_context(self) -> None:
        """A fresh kernel in the work dir with the session's env (a new sandbox if this one is gone)."""
        folder = self.work_dir
        if self._gone:
            self._sandbox = await self._backend._create_sandbox(folder)
            self._context = await _new_context(self._sandbox, folder, self._env)
            self._gone = False
        else:
            await self._restart_code_context()
            await self._link.until_answering(SETUP_SECONDS)
            await _set_up(self._sandbox, self._context, folder, self._env)
        self._dead = False
        self._link.unsettled = False
        self._link.last_count = 0

    async def _restart_code_context(self) -> None:
        """``restart_code_context``, tried again while E2B refuses it because its Jupyter is restarting the kernel itself."""
        loop = asyncio.get_running_loop()
        end = loop.time() + RESTART_RETRY_SECONDS
        while True:
            try:
                await self._sandbox.restart_code_context(self._context)
                return
            except Exception as exc:
                if RESTART_REFUSED not in str(exc) or loop.time() >= end:
                    raise translate_error(exc, "restarting the kernel", self.sandbox_id) from exc
            await asyncio.sleep(RESTART_RETRY_PAUSE)

    async def is_alive(self) -> bool:
        return not self._closed and not self._dead and bool(await self._sandbox_state())

    # -- files and commands ----------------------------------------------------------

    def _path(self, path: str) -> str:
        full = posixpath.normpath(posixpath.join(self.work_dir, path))
        if full != self.work_dir and not full.startswith(self.work_dir.rstrip("/") + "/"):
            raise FileAccessError(
                f"path {path!r} is outside the session's work dir {self.work_dir}",
                hint="use a path relative to the work dir, without '..'",
                path=path,
            )
        return full

    async def upload(self, path: str, data: bytes) -> None:
        full = self._path(path)
        try:
            async with self._in_use():
                await self._sandbox.files.write(full, data, use_octet_stream=True)
        except Exception as exc:
            raise translate_error(exc, f"uploading {path!r}", self.sandbox_id) from exc

    async def download(self, path: str) -> bytes:
        full = self._path(path)
        try:
            async with self._in_use():
                return bytes(await self._sandbox.files.read(full, format="bytes"))
        except FileNotFoundException:
            raise FileAccessError(f"no file {path!r} in the session's work dir", hint="list_files() shows what is there", path=path) from None
        except Exception as exc:
            raise translate_error(exc, f"downloading {path!r}", self.sandbox_id) from exc

    async def list_files(self, path: str = ".", *, recursive: bool = False) -> list[FileInfo]:
        full = self._path(path)
        try:
            async with self._in_use():
                entries = await self._sandbox.files.list(full, depth=64 if recursive else 1)
        except FileNotFoundException:
            raise FileAccessError(f"{path!r} is not a folder in the session's work dir", hint="pass a folder", path=path) from None
        except Exception as exc:
            if isinstance(exc, SandboxException) and "not a directory" in str(exc):
                raise FileAccessError(f"{path!r} is not a folder in the session's work dir", hint="pass a folder", path=path) from None
            raise translate_error(exc, f"listing {path!r}", self.sandbox_id) from exc
        root = self.work_dir.rstrip("/") + "/"
        infos = [
            FileInfo(e.path[len(root):], e.size, e.modified_time.timestamp(), is_dir=e.type is not None and e.type.value == "dir")
            for e in entries
            if e.path.startswith(root)
        ]
        return sorted(infos, key=lambda info: info.path)

    async def run_command(self, cmd: str, timeout: float | None = 60.0) -> CommandResult:
        """Run ``cmd`` with bash in the sandbox, in the work dir; killed after ``timeout`` seconds (None: no limit).

        Works while the kernel is dead too (the sandbox is still there); a
        non-zero exit is data (``exit_code``), not an exception.
        """
        if self._closed:
            raise SessionClosed("this kernel session was shut down", hint="start a new session")
        try:
            async with self._in_use():
                handle = await self._sandbox.commands.run(cmd, background=True, cwd=self.work_dir, envs=self._env or None, timeout=0)
                try:
                    async with asyncio.timeout(timeout):
                        done = await handle.wait()
                except TimeoutError:
                    await handle.kill()
                    return CommandResult(None, handle.stdout or "", handle.stderr or "", timed_out=True)
                except CommandExitException as exc:
                    return CommandResult(exc.exit_code, exc.stdout or "", exc.stderr or "")
                return CommandResult(done.exit_code, done.stdout or "", done.stderr or "")
        except DsagentError:
            raise
        except Exception as exc:
            raise translate_error(exc, f"running the command {cmd!r}", self.sandbox_id) from exc

    # -- ending ------------------------------------------------------------------------

    async def detach(self) -> None:
        """Stop using the sandbox but leave it (and its kernel) running until its timeout, for a later reconnect."""
        self._closed = True

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._link.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._sandbox.remove_code_context(self._context), 10)
        await _kill_quietly(self._sandbox)
