"""The ``local`` backend: ipykernels on this machine through jupyter_client, with a warm pool.

``local`` trusts the code it runs (it sees your files and environment); agent
code uses the ``sandbox`` backend, which subclasses this one and changes only
how the kernel process is launched.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import uuid
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import NoSuchKernel

from dsagent.errors import KernelDied, KernelStartFailed, SessionClosed
from dsagent.kernel_gateway.base import KernelBackend, KernelSession, OutputHook, run_hook
from dsagent.kernel_gateway.execute_loop import KernelLink, restarting, run_cell
from dsagent.kernel_gateway.forkserver import ForkFailed, ForkingKernelManager, preload_list, runtime_dir, warm_fork_server
from dsagent.kernel_gateway.kernel_death import (
    LAST_LINES_HEADING,
    MEMORY_ADVICE,
    MEMORY_DEATHS,
    STREAM_COPY_ENV,
    MemoryWitness,
    StreamCopy,
    death_reason,
    last_lines,
    peak_note,
    stream_copy_arguments,
    stream_copy_path,
)
from dsagent.kernel_gateway.kernel_env import kernel_environment
from dsagent.kernel_gateway.local_kernel import (
    ALIVE_POLL_SECONDS,
    LIVE_MANAGERS,
    StartedKernel,
    is_idle_of,
    kernel_spec_manager,
    kill_now,
    log_tail,
    remove_if_empty,
    wait_ready,
    warm_up_cell,
)
from dsagent.kernel_gateway.local_sockets import ipc_sockets, shared_zmq_context
from dsagent.kernel_gateway.models import Execution, FileInfo
from dsagent.kernel_gateway.pool import WarmPool
from dsagent.kernel_gateway.workdir import WorkDir
from dsagent.settings import Settings
from dsagent.workspace import Workspace

__all__ = ["LocalBackend", "LocalSession"]

log = logging.getLogger(__name__)

#: launch options for ipykernel kernels (other kernels get none), each worth ~0.5-1.3 ms a cell
IPYKERNEL_ARGUMENTS = (
    # IPython history in an in-memory database, as nbclient (papermill's engine) starts
    # kernels: %history, In and history_manager behave as there, nothing lands in ~/.ipython
    "--HistoryManager.hist_file=:memory:",
    # ipykernel sleeps 0.5 ms before every reply for clients that stop reading at
    # the reply; ours read iopub until the kernel says idle, so no output is lost
    "--IPythonKernel._execute_sleep=0",
    # every stream write also goes to a file that outlives the kernel (kernel_death.py), so
    # what a cell printed just before its kernel died is not lost with the IOPub thread
    *stream_copy_arguments(),
)


class LocalBackend(KernelBackend):
    """ipykernels on this machine; ``pool_size`` kernels are kept started ahead of time."""

    name = "local"
    #: whether kernels may be forks of the preloaded template (setting ``kernel_fork``)
    fork_kernels = True

    def __init__(self, settings: Settings | None = None, *, pool_size: int | None = None, kernel_name: str | None = None, **options: Any) -> None:
        super().__init__(settings, **options)
        self.workspace = Workspace.from_settings(self.settings)
        self.kernel_name = kernel_name or self.settings.kernel_name
        size = self.settings.kernel_pool_size if pool_size is None else pool_size
        self.pool: WarmPool[StartedKernel] = WarmPool(
            self._start_pooled, self._stop_kernel, size, self._kernel_alive, self.settings.kernel_pool_replenish_delay
        )
        self._sessions: "weakref.WeakSet[LocalSession]" = weakref.WeakSet()  # open ones: aclose() stops them too
        self._exits: set[asyncio.Task[None]] = set()  # forked kernels exiting in the background (see _stop_kernel)
        self._closing = False

    def describe(self) -> dict[str, Any]:
        return {
            "kernel_name": self.kernel_name,
            "pool_size": self.pool.size,
            "sessions_dir": str(self.workspace.sessions_dir),
        }

    async def warm(self) -> None:
        """Start the fork template (if forking) and fill the warm pool; wait until both are ready."""
        if self.fork_kernels and self.settings.kernel_fork:
            km = self._kernel_manager()
            assert isinstance(km, ForkingKernelManager)
            await warm_fork_server(km, self._kernel_env(None), self.settings.kernel_start_timeout)
        await self.pool.wait_ready()

    async def start_session(self, *, work_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> "LocalSession":
        if self.pool.size > 0:
            kernel = await self.pool.get()
            session = self._new_session(kernel, Path(work_dir) if work_dir else kernel.launch_dir, env)
            try:
                await session._apply_setup()
            except BaseException:
                await session.shutdown()
                raise
            if work_dir and kernel.launch_dir != session.work_path:
                remove_if_empty(kernel.launch_dir)
            return session
        folder = Path(work_dir) if work_dir else self._new_session_dir()
        kernel = await self._start_kernel(folder, env)
        return self._new_session(kernel, folder, None)

    def _new_session(self, kernel: StartedKernel, work_dir: Path, env: Mapping[str, str] | None) -> "LocalSession":
        """The session object around a started kernel (the sandbox backend makes its own kind)."""
        return LocalSession(self, kernel, work_dir, env)

    async def aclose(self) -> None:
        """Stop the pool's kernels and those of sessions still open: no kernel outlives its backend."""
        self._closing = True  # from now on kernels stop inline: an exit started after the gather below would be nobody's
        await self.pool.aclose()
        for session in list(self._sessions):
            await session.shutdown()
        # (exits started under another event loop were cancelled, so killed, when that loop ended)
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(task for task in list(self._exits) if task.get_loop() is loop))

    # -- launching (the sandbox backend overrides these two) -----------------

    def _kernel_manager(self) -> AsyncKernelManager:
        """A manager for one kernel of ``kernel_name``: forked from a preloaded template unless ``kernel_fork`` is off."""
        sockets = ipc_sockets()
        if not (self.fork_kernels and self.settings.kernel_fork):
            return AsyncKernelManager(kernel_name=self.kernel_name, kernel_spec_manager=kernel_spec_manager(), **sockets)
        return ForkingKernelManager(
            kernel_name=self.kernel_name,
            kernel_spec_manager=kernel_spec_manager(),
            **sockets,
            preload=preload_list(self.settings.kernel_preload),
            start_timeout=self.settings.kernel_start_timeout,
            idle=self.settings.kernel_fork_idle,
            launch_arguments=IPYKERNEL_ARGUMENTS,  # what _launch_arguments gives every forkable (ipykernel) kernel
        )

    def _kernel_env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        """The environment the kernel process starts with: the allowlisted part of ours (no secrets), then ``extra``."""
        env = kernel_environment(self.settings.kernel_env_allow, self.settings.kernel_env_passthrough)
        # ipykernel stops forwarding fd-level output (os.write, C code, subprocesses)
        # when it sees this variable: a kernel started under pytest would then not
        # behave as it does for users
        env.pop("PYTEST_CURRENT_TEST", None)
        env.update(extra or {})
        return env

    # -- kernel lifecycle ------------------------------------------------------

    def _new_session_dir(self) -> Path:
        folder = self.workspace.sessions_dir / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    async def _start_pooled(self) -> StartedKernel:
        kernel = await self._start_kernel(self._new_session_dir(), None)
        # IPython's first cells pay one-off costs (the non-silent execute path, the
        # display formatters, the first rich output on iopub); pay them here so a
        # session's first cell is as fast as its later ones. A statement whose value
        # is None, with store_history=False: no In/Out/_ entry, execution count stays 1.
        kc = kernel.kc
        msg_id = kc.execute(warm_up_cell(self.settings.kernel_preload), store_history=False, allow_stdin=False)
        timeout = self.settings.kernel_start_timeout
        while not is_idle_of(await kc.get_iopub_msg(timeout=timeout), msg_id):
            pass  # drained, so the session's first execute does not skip stale messages
        while (await kc.get_shell_msg(timeout=timeout))["parent_header"].get("msg_id") != msg_id:
            pass
        return kernel

    async def _start_kernel(self, folder: Path, env: Mapping[str, str] | None) -> StartedKernel:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KernelStartFailed(
                f"cannot create the work dir {folder}: {exc.strerror}",
                hint="pass a work dir in a writable folder",
                kernel_name=self.kernel_name,
                reason=str(exc),
            ) from exc
        log_path = self.workspace.home / "logs" / f"kernel-{folder.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        km = self._kernel_manager()
        km.shutdown_wait_time = self.settings.kernel_shutdown_wait
        km.context = shared_zmq_context()
        kernel_env = self._kernel_env(env)
        copy = self._stream_copy(km)
        if copy is not None:
            kernel_env[STREAM_COPY_ENV] = str(copy.path)
        log_file = open(log_path, "ab")
        try:
            await km.start_kernel(cwd=str(folder), env=kernel_env, stdout=log_file, stderr=log_file, extra_arguments=_launch_arguments(km))
            LIVE_MANAGERS.add(km)
            kc = km.client(context=km.context)  # the shared context, see local_sockets.shared_zmq_context
            if isinstance(km, ForkingKernelManager):  # (made while the kernel initializes)
                await km.wait_started(self.settings.kernel_start_timeout)
            # liveness comes from the manager (the process), so the heartbeat
            # thread jupyter_client would start, waking every second, is not needed
            kc.start_channels(hb=False)
            await wait_ready(km, kc, self.settings.kernel_start_timeout)
        except NoSuchKernel:
            log_file.close()
            raise KernelStartFailed(
                f"no Jupyter kernelspec named {self.kernel_name!r} is installed",
                hint="install it (e.g. `python -m ipykernel install --user --name NAME`) "
                "or set DSAGENT_KERNEL_NAME to one listed by `jupyter kernelspec list`",
                kernel_name=self.kernel_name,
                reason="no such kernelspec",
            ) from None
        except BaseException as exc:
            kill_now(km)
            log_file.close()
            if copy is not None:
                copy.remove()
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                raise
            tail = log_tail(log_path)
            raise KernelStartFailed(
                f"kernel {self.kernel_name!r} failed to start: {exc or type(exc).__name__}"
                + (f"\n  kernel log ({log_path}):\n    " + tail.replace("\n", "\n    ") if tail else ""),
                hint="check the kernelspec (`jupyter kernelspec list`) and the kernel log",
                kernel_name=self.kernel_name,
                reason=str(exc),
            ) from exc
        return StartedKernel(km, kc, folder, log_file, copy)

    def _stream_copy(self, km: AsyncKernelManager) -> StreamCopy | None:
        """Where the kernel keeps its stream copy: the owner-only runtime folder of its sockets (the sandbox: its bound folder)."""
        try:
            return StreamCopy(stream_copy_path(Path(runtime_dir())))
        except ForkFailed:
            return None

    async def _kernel_alive(self, kernel: StartedKernel) -> bool:
        return await kernel.km.is_alive()

    async def _stop_kernel(self, kernel: StartedKernel) -> None:
        kernel.kc.stop_channels()
        if kernel.stream_copy is not None:  # nobody reads it any more (a kernel still exiting writes to the unlinked file)
            kernel.stream_copy.remove()
        if getattr(kernel.km, "forked", False) and not self._closing:
            # A forked kernel's exit after the shutdown request (its atexit work, then the template
            # reaps it: ~30 ms) need not hold up the caller, as it held up every fresh-kernel job of a
            # sweep: it goes on in the background, graceful as before (killed after
            # shutdown_wait_time), and aclose() waits for it. The request itself goes out now: the
            # kernel's exit must not depend on this loop turning again before the caller blocks it.
            await kernel.km.begin_shutdown()  # type: ignore[attr-defined]  # a ForkingKernelManager
            task = asyncio.get_running_loop().create_task(self._shutdown(kernel))
            self._exits.add(task)
            task.add_done_callback(self._exits.discard)
            return
        await self._shutdown(kernel)

    async def _shutdown(self, kernel: StartedKernel) -> None:
        try:
            await kernel.km.shutdown_kernel(now=False)
        except asyncio.CancelledError:
            kill_now(kernel.km)
            raise
        except Exception:
            log.warning("graceful kernel shutdown failed; killing it", exc_info=True)
            kill_now(kernel.km)
        LIVE_MANAGERS.discard(kernel.km)
        kernel.log_file.close()


def _launch_arguments(km: AsyncKernelManager) -> list[str]:
    """``IPYKERNEL_ARGUMENTS`` if the kernelspec starts an ipykernel, else nothing."""
    return list(IPYKERNEL_ARGUMENTS) if any("ipykernel" in arg for arg in km.kernel_spec.argv) else []


class LocalSession(KernelSession):
    """One kernel of a ``LocalBackend``; the work dir is on this machine."""

    backend_name = "local"

    def __init__(self, backend: LocalBackend, kernel: StartedKernel, work_dir: Path, env: Mapping[str, str] | None) -> None:
        self._backend = backend
        self._kernel = kernel
        self._files = WorkDir(work_dir)
        self._setup_env = dict(env or {})
        self._chdir = work_dir.resolve() != kernel.launch_dir.resolve()
        self._lock = asyncio.Lock()
        self._closed = False
        self._dead = False
        self._link = _LocalLink(self)
        self._memory = MemoryWitness()  # the kernel's peak memory and OOM counters, for a death's reason
        self._files.root.mkdir(parents=True, exist_ok=True)
        backend._sessions.add(self)

    @property
    def work_dir(self) -> str:
        return str(self._files.root)

    @property
    def work_path(self) -> Path:
        return self._files.root

    @property
    def kernel_pid(self) -> int | None:
        return getattr(self._kernel.km.provisioner, "pid", None)

    @property
    def settings(self) -> Settings:
        return self._backend.settings

    def _check_usable(self) -> None:
        if self._closed:
            raise SessionClosed("this kernel session was shut down", hint="start a new session")
        if self._dead:
            raise KernelDied(
                "the kernel of this session has died", hint="call restart() (state is lost)", kernel_name=self._backend.kernel_name, outputs=[]
            )

    async def _apply_setup(self) -> None:
        """Move a pooled kernel into its session's work dir and environment (one silent round trip)."""
        if not self._chdir and not self._setup_env:
            return
        self._files.root.mkdir(parents=True, exist_ok=True)
        code = (
            "import os as _dsagent_os\n"
            + (f"_dsagent_os.chdir({str(self._files.root)!r})\n" if self._chdir else "")
            + (f"_dsagent_os.environ.update({self._setup_env!r})\n" if self._setup_env else "")
            + "del _dsagent_os\n"
        )
        kc = self._kernel.kc
        msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        reply = await self._reply(msg_id, self.settings.kernel_start_timeout)
        if reply is None or reply["content"].get("status") != "ok":
            raise KernelStartFailed(
                f"could not move the kernel into its work dir {self.work_dir}",
                hint="check that the folder is readable",
                kernel_name=self._backend.kernel_name,
                reason=str(reply and reply["content"]),
            )

    async def execute(self, code: str, *, timeout: float | None = None, on_output: OutputHook | None = None) -> Execution:
        async with self._lock:
            self._check_usable()
            timeout = self.settings.execution_timeout if timeout is None else timeout
            return await self._execute(code, timeout, on_output)

    async def _execute(self, code: str, timeout: float | None, on_output: OutputHook | None) -> Execution:
        self._memory.begin_cell(self._memory_pid())
        result = await run_cell(
            self._link, code, timeout=timeout, grace=self.settings.interrupt_grace, max_output_bytes=self.settings.max_output_bytes, on_output=on_output
        )
        if result.status == "died":
            self._dead = True
            if not self._link.aborted:  # (a restart() ended the cell: the kernel was alive)
                await self._recover(result, on_output)
        return result

    async def _recover(self, result: Execution, on_output: OutputHook | None) -> None:
        """Add what the dead kernel printed that never arrived (from its stream copy), and quote its last lines in the error."""
        copy = self._kernel.stream_copy
        if copy is not None:
            recovered = copy.recover(self._link.msg_id, self._link.received)
            copy.remove()  # a restarted kernel starts a new one
            result.outputs.extend(recovered)
            for output in recovered:
                await run_hook(on_output, output)
        if result.error is None:
            return
        evalue = result.error.evalue
        peak = peak_note(self._memory)
        if any(words in evalue for words in MEMORY_DEATHS):  # (it names what the kernel used itself)
            evalue += f". What to do: {MEMORY_ADVICE}."
        elif peak:
            evalue += f". {peak[0].upper()}{peak[1:]}."
        lines = last_lines(result.outputs)
        if lines:
            evalue += LAST_LINES_HEADING + "\n".join(f"  | {line}" for line in lines)
        result.error = replace(result.error, evalue=evalue)

    def _memory_pid(self) -> int | None:
        """The pid whose memory is the kernel's (the sandbox's is inside bwrap)."""
        return self.kernel_pid

    async def _reply(self, msg_id: str, timeout: float) -> dict[str, Any] | None:
        """The shell reply to ``msg_id``, or None if the kernel died or stayed silent."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            try:
                msg = await self._kernel.kc.get_shell_msg(timeout=min(ALIVE_POLL_SECONDS, end - loop.time()))
            except queue.Empty:
                if not await self._kernel.km.is_alive():
                    return None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg
        return None

    def _death_reason(self) -> str:
        """Why the kernel process is gone: the signal by name, the out-of-memory killer's evidence, its peak memory."""
        return death_reason(self._exit_code(), self._memory)

    def _exit_code(self) -> int | None:
        """The kernel's exit code, negative for a signal (the sandbox maps bwrap's)."""
        process = getattr(self._kernel.km.provisioner, "process", None)
        return process.poll() if process is not None else None

    async def interrupt(self) -> None:
        self._check_usable()
        await self._kernel.km.interrupt_kernel()

    async def restart(self) -> None:
        if self._closed:
            raise SessionClosed("this kernel session was shut down", hint="start a new session")
        async with restarting(self._lock, self._link):
            await self._restart_kernel()

    async def _restart_kernel(self) -> None:
        # jupyter_client relaunches in the original cwd: the pool's folder, which
        # was removed if the session moved elsewhere
        self._kernel.launch_dir.mkdir(parents=True, exist_ok=True)
        await self._kernel.km.restart_kernel(now=True)
        # (not kc.wait_for_ready: its 0.2 s of listening for silence was most of a forked kernel's restart)
        await wait_ready(self._kernel.km, self._kernel.kc, self.settings.kernel_start_timeout)
        self._dead = False
        await self._apply_setup()
        if self._chdir:
            remove_if_empty(self._kernel.launch_dir)

    async def is_alive(self) -> bool:
        return not self._closed and await self._kernel.km.is_alive()

    async def upload(self, path: str, data: bytes) -> None:
        await asyncio.to_thread(self._files.write, path, data)

    async def download(self, path: str) -> bytes:
        return await asyncio.to_thread(self._files.read, path)

    async def list_files(self, path: str = ".", *, recursive: bool = False) -> list[FileInfo]:
        return await asyncio.to_thread(self._files.list, path, recursive=recursive)

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._backend._stop_kernel(self._kernel)


class _LocalLink(KernelLink):
    """The execute loop's view of a local kernel: iopub through jupyter_client, liveness from the process."""

    poll_seconds = ALIVE_POLL_SECONDS

    def __init__(self, session: LocalSession) -> None:
        super().__init__()
        self._session = session
        self.msg_id = ""
        self.received = {"stdout": 0, "stderr": 0}  # characters of the cell's streams that arrived (kernel_death.StreamCopy)

    async def send(self, code: str) -> None:
        # stop_on_error=False: cells run one at a time, so the only request that could
        # be queued behind an error is the next cell after a cancelled one, which
        # ipykernel would otherwise abort
        self.msg_id = self._session._kernel.kc.execute(code, allow_stdin=False, stop_on_error=False)
        self.received = {"stdout": 0, "stderr": 0}

    async def receive(self, wait: float) -> dict[str, Any] | None:
        kc = self._session._kernel.kc
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while True:
            try:
                msg = await kc.get_iopub_msg(timeout=max(0.0, end - loop.time()))
            except queue.Empty:
                return None
            if msg["parent_header"].get("msg_id") == self.msg_id:
                if msg["msg_type"] == "stream":
                    content = msg["content"]
                    name = content.get("name")
                    if name in self.received:
                        self.received[name] += len(content.get("text", ""))
                return msg

    async def probe(self) -> str:
        if await self._session._kernel.km.is_alive():
            self._session._memory.sample()
            return ""
        return self._session._death_reason()

    async def interrupt(self) -> None:
        await self._session._kernel.km.interrupt_kernel()

    async def restart(self) -> None:
        await self._session._restart_kernel()

    async def reply(self, timeout: float) -> dict[str, Any] | None:
        return await self._session._reply(self.msg_id, timeout)

    async def abandon(self) -> None:
        session = self._session
        if not session._closed and await session._kernel.km.is_alive():
            await session._kernel.km.interrupt_kernel()
