"""The code contexts of the loopback E2B server: one real ipykernel each, driven as E2B's server drives its Jupyter kernels.

Written here from what e2b-dev/code-interpreter's ``template/server`` does
(``messaging.py``, ``contexts.py``, ``main.py``), not copied. Where E2B's
server talks to Jupyter Server (REST and the kernel websocket), this talks to
the kernel with jupyter_client; what reaches the client is the same:

- a cell's iopub messages are routed by their parent's msg id: ``stream`` ->
  ``stdout``/``stderr`` lines, ``display_data``/``execute_result`` ->
  ``result`` lines (``Result``: the known mime types as fields, ``text`` with
  one pair of surrounding quotes removed, the rest in ``extra``),
  ``execute_input`` -> ``number_of_executions``, the first ``error`` (later
  ones and an error ``execute_reply`` after it are dropped);
- the cell ends when the kernel goes idle *after* its ``execute_input``; an
  execute request ipykernel aborts (one that was queued behind a cell that
  ended in an error, e.g. the KeyboardInterrupt of an interrupted cell) has no
  ``execute_input`` and an ``aborted`` reply, which E2B's server does not
  recognise (it looks for ``abort``): that request's stream never ends, only
  keepalives come;
- requests are sent with ``stop_on_error`` on, one cell at a time per context
  (a lock held while the cell's stream is open);
- env vars: the first cell of a context gets the sandbox's env vars (envd's
  ``/envs``) and each cell its ``env_vars`` as ``os.environ['K'] = 'V'`` lines
  put in front of the code (so a value with ``'``, a newline or a backslash
  breaks or changes the cell, as on E2B); after a cell with ``env_vars`` a
  silent cell deletes them again (or puts back the sandbox's value);
- a context's kernel starts in ``/home/user`` and then runs ``%cd <cwd>``
  (silent); a restart (``POST /contexts/{id}/restart``, or Jupyter's restarter
  after the kernel died) starts it in ``/home/user`` again, without that
  ``%cd``; after an explicit restart the sandbox's env vars are set again on
  the next cell, after a death they are not;
- a kernel that dies is noticed by a restarter poll (Jupyter's polls every 3 s)
  and restarted; cells in flight get the ``ContextRestarting`` error. A
  ``POST /contexts/{id}/restart`` while that restart is under way fails (Jupyter
  answers its REST restart with 500, E2B's server then answers "Failed to restart
  context <id>", having closed its connection: cells in flight end unexpectedly,
  the sandbox's env vars are not set again); a later restart works;
- after ``POST /contexts/{id}/restart`` of a kernel that was busy (running a
  cell), the first request's iopub messages are lost and its stream never ends:
  Jupyter Server does not nudge a kernel whose execution state it still has as
  "busy" (the new kernel's first statuses answer untracked requests), so the new
  connection's iopub subscription may not be up when the kernel runs that
  request. On E2B that is a race (3 of 10 busy restarts measured against the
  real server); here it happens every time, so a client that is not ready for
  it fails every time too. A restart of an idle kernel is nudged: nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelClient

from dsagent.kernel_gateway.kernel_env import kernel_environment
from dsagent.kernel_gateway.local_sockets import ipc_sockets, shared_zmq_context
from dsagent.settings import Settings
from dsagent.testing.e2b_view import KERNEL_HOME, SANDBOX_HOME, SandboxView, ViewKernelManager

__all__ = ["Kernel", "KernelContext", "Kernels", "RestartRefused", "normalize_language", "start_context"]

log = logging.getLogger(__name__)

END = {"type": "end_of_execution"}
_UNEXPECTED_END = {"type": "unexpected_end_of_execution"}
#: the mime types E2B's ``Result`` has a field for (the rest goes to ``extra``)
RESULT_FIELDS = {
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
KERNEL_START_SECONDS = 120.0


class RestartRefused(RuntimeError):
    """A restart asked for while Jupyter's restarter is starting the dead kernel again (E2B's server: 500)."""


def normalize_language(language: str | None) -> str:
    """E2B's spelling of a language: lower case, ``js``/``ts`` spelled out, Python when none is given."""
    name = (language or "python").lower().strip()
    return {"js": "javascript", "ts": "typescript"}.get(name, name)


def result_line(is_main: bool, data: Mapping[str, Any]) -> dict[str, Any]:
    """A display message's data as E2B's server streams it (a ``Result``, without its ``None`` fields)."""
    rest = dict(data)
    line: dict[str, Any] = {"type": "result"}
    text = rest.pop("text/plain", None)
    if isinstance(text, str) and text and text[0] in "'\"" and text.endswith(text[0]):
        text = text[1:-1]
    if text is not None:
        line["text"] = text
    for mime, name in RESULT_FIELDS.items():
        value = rest.pop(mime, None)
        if value is not None:
            line[name] = value
    line["extra"] = rest
    line["is_main_result"] = is_main
    return line


def env_code(env: Mapping[str, str]) -> str:
    """E2B's Python lines that set env vars: the value between single quotes, as it is."""
    return "\n".join(f"import os; os.environ['{key}'] = '{value}'" for key, value in env.items())


def _indent_of(code: str) -> str:
    for line in code.split("\n"):
        if line.strip():
            return line[: len(line) - len(line.lstrip())]
    return ""


@dataclass
class _Execution:
    msg_id: str
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    background: bool = False
    input_accepted: bool = False
    errored: bool = False
    #: the first request after a restart of a busy kernel: its iopub messages never reach the server
    deaf: bool = False


class KernelContext:
    """One context: a kernel in the sandbox view, the cells in flight on it, and its per-context state."""

    def __init__(self, kernel: Kernel, cwd: str, sandbox_envs: Mapping[str, str], restarter_seconds: float) -> None:
        self.id = str(uuid.uuid4())
        self.language = "python"
        self.cwd = cwd
        self.km = km = kernel.km
        self.kc = kc = kernel.kc
        self.lock = asyncio.Lock()  # one cell at a time, held while its stream is open
        self.cleanup: asyncio.Task[None] | None = None  # the silent cell that removes a cell's env vars
        self._sandbox_envs = sandbox_envs  # envd's /envs: read at the first cell
        self._global_envs: dict[str, str] | None = None
        self._executions: dict[str, _Execution] = {}
        self._nudges: dict[str, asyncio.Future[None]] = {}  # kernel_info requests waiting for their idle status on iopub
        self._log_file = kernel.log_file
        self._restarter_seconds = restarter_seconds
        self._restart_lock = asyncio.Lock()  # one (re)start of the kernel at a time: the restarter's or a client's
        self._auto_restarting = False  # the restarter is starting a dead kernel again
        self._busy = False  # Jupyter Server's view of the kernel: the last status of an execute request
        self._deaf_next = False  # the next request loses its iopub messages (after a restart of a busy kernel)
        self._tasks = [asyncio.create_task(self._read(kc.get_iopub_msg, "iopub")), asyncio.create_task(self._read(kc.get_shell_msg, "shell"))]
        self._tasks.append(asyncio.create_task(self._restarter()))

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    # -- messages ---------------------------------------------------------------

    async def _read(self, get: Any, channel: str) -> None:
        while True:
            try:
                msg = await get()
            except asyncio.CancelledError:
                raise
            except Exception:  # channels closing with the kernel
                await asyncio.sleep(0.05)
                continue
            self._route(msg, channel)

    def _route(self, msg: dict[str, Any], channel: str = "iopub") -> None:
        parent = msg["parent_header"].get("msg_id", "")
        if msg["msg_type"] == "status":
            state = msg["content"].get("execution_state")
            if msg["parent_header"].get("msg_type") == "execute_request":  # what Jupyter Server tracks
                self._busy = state == "busy"
            waiter = self._nudges.pop(parent, None) if state == "idle" else None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        execution = self._executions.get(parent)
        if execution is None or (execution.deaf and channel == "iopub"):
            return
        kind, content = msg["msg_type"], msg["content"]
        put = execution.queue.put_nowait
        if kind in ("error", "execute_reply") and (kind == "error" or content.get("status") == "error"):
            if not execution.errored:
                execution.errored = True
                put({"type": "error", "name": content.get("ename", ""), "value": content.get("evalue", ""), "traceback": "".join(content.get("traceback", []))})
        elif kind == "stream" and content.get("name") in ("stdout", "stderr"):
            put({"type": content["name"], "text": content["text"], "timestamp": _date(msg)})
        elif kind in ("display_data", "execute_result"):
            put(result_line(kind == "execute_result", content.get("data", {})))
        elif kind == "execute_input":
            execution.input_accepted = True
            put({"type": "number_of_executions", "execution_count": content.get("execution_count")})
        elif kind == "status":
            state = content.get("execution_state")
            if state == "busy" and execution.background:
                execution.input_accepted = True
            elif state == "idle" and execution.input_accepted:
                put(END)
        # an "aborted" execute_reply is not recognised (E2B's server checks for "abort"): no end for that request

    def _send(self, code: str, *, background: bool) -> _Execution:
        msg_id = self.kc.execute(code, silent=background, store_history=True, allow_stdin=False, stop_on_error=True)
        execution = self._executions[msg_id] = _Execution(msg_id, background=background, deaf=self._deaf_next)
        self._deaf_next = False
        return execution

    async def _lines(self, execution: _Execution, keepalive: float) -> AsyncIterator[dict[str, Any]]:
        """A cell's lines until it ends; a keepalive line every ``keepalive`` seconds of silence."""
        while True:
            try:
                line = await asyncio.wait_for(execution.queue.get(), keepalive)
            except TimeoutError:
                yield {"type": "keepalive"}
                continue
            if line is END:
                return
            if line is _UNEXPECTED_END:
                yield {"type": "error", "name": "UnexpectedEndOfExecution",
                       "value": "Connection to the execution was closed before the execution was finished", "traceback": ""}
                return
            yield line

    async def _silent(self, code: str, keepalive: float) -> list[dict[str, Any]]:
        execution = self._send(code, background=True)
        try:
            return [line async for line in self._lines(execution, keepalive) if line["type"] == "error"]
        finally:
            self._executions.pop(execution.msg_id, None)

    # -- cells ----------------------------------------------------------------------

    async def change_dir(self, keepalive: float) -> bool:
        errors = await self._silent(f"%cd {self.cwd}", keepalive)
        return not errors

    async def execute(self, code: str, env_vars: Mapping[str, str] | None, keepalive: float) -> AsyncIterator[dict[str, Any]]:
        """The lines of one cell; closing this generator early (the client left) interrupts the kernel."""
        async with self.lock:
            async with self._restart_lock:  # a kernel being restarted gets the cell once it is up
                pass
            if self.cleanup is not None and not self.cleanup.done():
                with contextlib.suppress(Exception):
                    await self.cleanup
            self.cleanup = None
            prefix = ""
            if self._global_envs is None:
                self._global_envs = dict(self._sandbox_envs)
                prefix = env_code(self._global_envs)
            per_cell = env_code(env_vars or {})
            if prefix or per_cell:
                indent = _indent_of(code)
                lines = f"{prefix}\n{per_cell}".split("\n")
                code = "\n".join(indent + line if line.strip() else line for line in lines) + "\n" + code
            execution = self._send(code, background=False)
            try:
                async for line in self._lines(execution, keepalive):
                    yield line
            except (asyncio.CancelledError, GeneratorExit):
                # the client went away mid-cell: interrupt the kernel so the next cell is not stuck behind it
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.km.interrupt_kernel())
                raise
            finally:
                self._executions.pop(execution.msg_id, None)
            if env_vars:
                self.cleanup = asyncio.create_task(self._remove_envs(dict(env_vars), keepalive))

    async def _remove_envs(self, env_vars: Mapping[str, str], keepalive: float) -> None:
        kept = self._global_envs or {}
        lines = [env_code({k: kept[k]}) if k in kept else f"import os; del os.environ['{k}']" for k in env_vars]
        errors = await self._silent("\n".join(lines), keepalive)
        if errors:
            log.warning("removing env vars after a cell failed: %s", errors)

    # -- lifecycle ------------------------------------------------------------------

    def _end_all(self, error: dict[str, Any] | None) -> None:
        """End every cell in flight: with ``error`` then a normal end, or (None) unexpectedly."""
        for execution in list(self._executions.values()):
            if error is None:
                execution.queue.put_nowait(_UNEXPECTED_END)
            else:
                execution.queue.put_nowait(error)
                execution.queue.put_nowait(END)

    async def ready(self) -> None:
        """Until the (re)started kernel's iopub reaches us: ``kernel_info`` until its idle status arrives.

        A subscription connects a moment after the kernel binds; what the kernel
        publishes before that is lost, a cell's end included. Jupyter Server
        "nudges" a kernel the same way before it passes messages on.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + KERNEL_START_SECONDS
        wait = 0.05
        while loop.time() < end:
            waiter = self._nudges[self.kc.kernel_info()] = loop.create_future()
            try:
                await asyncio.wait_for(waiter, wait)
                return
            except TimeoutError:
                wait = min(2 * wait, 1.0)
                if not await self.km.is_alive():
                    raise RuntimeError("the kernel died while starting") from None
        raise RuntimeError(f"the kernel did not answer within {KERNEL_START_SECONDS:g}s")

    async def _restarter(self) -> None:
        """Jupyter's restarter: a kernel found dead is restarted, and the cells in flight hear ``ContextRestarting``."""
        while True:
            await asyncio.sleep(self._restarter_seconds)
            async with self._restart_lock:
                if await self.km.is_alive():
                    continue
                self._auto_restarting = True
                self._end_all({"type": "error", "name": "ContextRestarting", "value": "Context was restarted", "traceback": ""})
                try:
                    await self._start_again(now=True)
                except Exception:
                    log.warning("the loopback server could not restart the kernel of context %s", self.id, exc_info=True)
                finally:
                    self._auto_restarting = False
                    self._busy = False  # a restart on new ports: Jupyter Server starts watching the kernel afresh

    async def _start_again(self, *, now: bool) -> None:
        await self.km.restart_kernel(now=now)
        await self.ready()

    async def restart(self) -> None:
        """``POST /contexts/{id}/restart``: cells in flight end unexpectedly, the kernel starts again in /home/user.

        Refused (``RestartRefused``) while the restarter is starting a dead
        kernel again. After a restart of a busy kernel the next request is deaf
        (see the module's docstring).
        """
        self._end_all(None)
        if self.cleanup is not None:
            self.cleanup.cancel()
        if self._auto_restarting:
            raise RestartRefused(f"Failed to restart context {self.id}")
        busy = self._busy
        async with self._restart_lock:
            await self._start_again(now=False)
        self._deaf_next, self._busy = busy, False
        self._global_envs = None  # a new connection: the sandbox's env vars go in front of the next cell again

    async def close(self) -> None:
        self._end_all(None)
        for task in [*self._tasks, self.cleanup]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not None), return_exceptions=True)
        self.kc.stop_channels()
        try:
            await self.km.shutdown_kernel(now=False)
        except Exception:
            log.warning("killing the kernel of context %s", self.id, exc_info=True)
            with contextlib.suppress(Exception):
                await self.km.shutdown_kernel(now=True)
        self._log_file.close()

    async def interrupt(self) -> None:
        await self.km.interrupt_kernel()


def _date(msg: dict[str, Any]) -> str:
    date = msg["header"].get("date")
    if isinstance(date, datetime):
        return date.isoformat()
    return str(date or datetime.now(timezone.utc).isoformat())


def kernel_env(settings: Settings, mpl_cache: Path) -> dict[str, str]:
    """A context kernel's environment: this machine's allow-listed part, as root in the sandbox."""
    env = kernel_environment(settings.kernel_env_allow, settings.kernel_env_passthrough)
    for name in ("PYTEST_CURRENT_TEST", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "MPLBACKEND"):
        env.pop(name, None)
    # a shared matplotlib cache outside the sandbox's folders: the font list is built once per machine, not per kernel
    return {**env, "HOME": KERNEL_HOME, "USER": "root", "MPLCONFIGDIR": str(mpl_cache)}


@dataclass
class Kernel:
    """A started kernel in the sandbox view, and the state of root's IPython profile when it started."""

    km: ViewKernelManager
    kc: AsyncKernelClient
    log_file: Any
    profile: str

    async def stop(self) -> None:
        self.kc.stop_channels()
        with contextlib.suppress(Exception):
            await self.km.shutdown_kernel(now=True)
        self.log_file.close()


class Kernels:
    """Where contexts get their kernels: each started inside the view in /home/user, as Jupyter starts a context's kernel.

    ``spare`` kernels are kept started ahead, so a new context does not wait
    for one (E2B's Jupyter starts a kernel per context; a spare only saves the
    wait). A spare is handed out only if root's IPython profile (config and
    startup files, which a kernel reads when it starts) is what it was when the
    spare started; otherwise a fresh kernel starts.
    """

    def __init__(self, view: SandboxView, settings: Settings, log_dir: Path, *, spare: int = 1) -> None:
        self.view = view
        self.settings = settings
        self.log_dir = log_dir
        self.spare = spare
        self._ready: list[asyncio.Task[Kernel]] = []

    def _profile(self) -> str:
        folder = self.view.host_path(f"{KERNEL_HOME}/.ipython/profile_default")
        digest = hashlib.sha256()
        read_at_start = [*folder.glob("ipython_*config.py"), *(folder / "startup").glob("*.py")]  # not the history file
        for path in sorted(p for p in read_at_start if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    async def take(self) -> Kernel:
        profile = self._profile()
        while self._ready:
            task = self._ready.pop(0)
            try:
                kernel = await task
            except Exception:
                continue
            if kernel.profile == profile and await kernel.km.is_alive():
                self._refill()
                return kernel
            await kernel.stop()
        kernel = await self._start(profile)
        self._refill()
        return kernel

    def _refill(self) -> None:
        while len(self._ready) < self.spare:
            self._ready.append(asyncio.create_task(self._start(self._profile())))

    async def _start(self, profile: str) -> Kernel:
        km = ViewKernelManager(self.view, kernel_name="python3", **ipc_sockets())
        km.shutdown_wait_time = 2.0
        km.context = shared_zmq_context()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_dir / f"kernel-{uuid.uuid4().hex[:8]}.log", "ab")
        mpl_cache = Path(tempfile.gettempdir()) / f"dsagent-e2b-loopback-mpl-{os.getuid()}"
        mpl_cache.mkdir(parents=True, exist_ok=True)
        try:
            await km.start_kernel(cwd=str(self.view.host_path(SANDBOX_HOME)), env=kernel_env(self.settings, mpl_cache), stdout=log_file, stderr=log_file)
            kc = km.client(context=km.context)
            kc.start_channels(hb=False)
            await kc.wait_for_ready(timeout=KERNEL_START_SECONDS)
        except BaseException:
            log_file.close()
            with contextlib.suppress(Exception):
                await km.shutdown_kernel(now=True)
            raise
        return Kernel(km, kc, log_file, profile)

    async def close(self) -> None:
        tasks, self._ready = self._ready, []
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Kernel):
                await result.stop()


async def start_context(kernels: Kernels, cwd: str, sandbox_envs: Mapping[str, str], *, restarter_seconds: float) -> KernelContext:
    """A new Python context: a kernel started in /home/user inside the view (then ``change_dir`` moves it to ``cwd``)."""
    context = KernelContext(await kernels.take(), cwd, sandbox_envs, restarter_seconds)
    try:
        await context.ready()
    except BaseException:
        await context.close()
        raise
    return context
