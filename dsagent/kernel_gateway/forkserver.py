"""The kernel fork server: new local kernels are ``fork()``s of a template that has already imported everything.

A cold ipykernel spends most of its start importing IPython, ipykernel and,
in its first cells, numpy, pandas and matplotlib. A template process
(``forktemplate.py``) does those imports once per kernel configuration
(interpreter, import-relevant environment, preload list); each new kernel is
a fork of it that then makes its own ZMQ sockets, reads its own connection
file, moves into its own work dir and environment and reseeds its random
streams (see ``forktemplate``).

To jupyter_client the child is an ordinary kernel: ``ForkingKernelManager``
only replaces the Popen of its ``LocalProvisioner`` with a ``ForkedProcess``
(poll/wait/kill/send_signal on a pidfd; the template, the child's parent,
reaps it and reports the exit code), so interrupt (SIGINT to its own process
group), restart, shutdown, kill and death detection work unchanged. Anything
that stops a fork (no template, a template that died, a kernelspec that is not
``python -m ipykernel_launcher``) falls back to a normal launch, logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from jupyter_client import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner

from dsagent.kernel_gateway.forkprocess import ForkedProcess, fork_reply
from dsagent.secrets import looks_secret

__all__ = ["ForkServer", "ForkedProcess", "ForkingKernelManager", "adopted_connection", "fork_kernel", "fork_server_for", "preload_list", "runtime_dir", "stop_all"]

log = logging.getLogger(__name__)

TEMPLATE_SCRIPT = Path(__file__).with_name("forktemplate.py")
#: what the template's children run (part of a template's identity, as its script)
KERNEL_SCRIPT = Path(__file__).with_name("forkkernel.py")
#: environment variables that change what an import does: a template is shared only by kernels that agree on them
IMPORT_ENV_PREFIXES = ("PYTHON", "MPL", "OMP_", "OPENBLAS", "MKL_", "NUMEXPR", "LD_", "VIRTUAL_ENV", "CONDA_PREFIX", "JUPYTER", "IPYTHON")
#: besides IMPORT_ENV_PREFIXES, what a template's environment keeps (matplotlib's and IPython's config folders)
TEMPLATE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "USER")
#: the per-kernel argument in a template's kernel command line (see forktemplate.py)
CONNECTION_FILE = "{connection_file}"
#: seconds before a process tries again to start a template after one it started died while starting
RETRY_AFTER_FAILURE = 60.0
#: files in the runtime folder untouched for this long, of no living template or kernel, are removed
STALE_AFTER_SECONDS = 24 * 3600.0


class ForkFailed(RuntimeError):
    """The template could not fork a kernel; the caller launches one the normal way (and says so, once)."""


class NotReady(ForkFailed):
    """No template takes requests yet (it is starting): launch normally this time, quietly."""


def preload_list(setting: str) -> tuple[str, ...]:
    """The ``kernel_preload`` setting as module names."""
    return tuple(n.strip() for n in setting.split(",") if n.strip())


def forkable(kernel_cmd: list[str]) -> bool:
    """Whether ``kernel_cmd`` starts an ipykernel the template can become (``PY -m ipykernel_launcher -f FILE ...``)."""
    return (
        len(kernel_cmd) >= 5
        and kernel_cmd[1:3] in (["-m", "ipykernel_launcher"], ["-m", "ipykernel"])
        and os.path.isabs(kernel_cmd[0])
        and "-f" in kernel_cmd[3:-1]
    )


def template_argv(kernel_cmd: list[str]) -> tuple[str, ...]:
    """The command line a template serves for ``kernel_cmd``: its arguments, ``{connection_file}`` for the per-kernel one."""
    args = list(kernel_cmd[3:])
    args[args.index("-f") + 1] = CONNECTION_FILE
    return tuple(args)


class ForkServer:
    """A client of the template for one kernel configuration; starts the template in the background when none runs.

    Templates are shared by every dsagent process of this user (CLI calls,
    ``serve``, Dask workers, test workers): the socket is named after the
    configuration in an owner-only folder under the system temp dir. A
    template that is still importing, or that died, is no reason to wait: the
    caller launches its kernel normally and the next one is forked.
    """

    def __init__(self, python: str, env: Mapping[str, str], preload: tuple[str, ...], idle: float, kernel_argv: tuple[str, ...]) -> None:
        self.python = python
        self.env = _template_env(env)
        self.preload = preload
        self.idle = idle
        self.kernel_argv = kernel_argv  # the template builds its kernel app and shell for this command line
        identity = json.dumps([python, sorted(self.env.items()), preload, kernel_argv, str(TEMPLATE_SCRIPT), _mtime(TEMPLATE_SCRIPT), _mtime(KERNEL_SCRIPT)])
        name = hashlib.sha256(identity.encode()).hexdigest()[:16]
        folder = runtime_dir()
        self.socket_path = os.path.join(folder, f"{name}.sock")
        self.pid_path = os.path.join(folder, f"{name}.pid")
        self.log_path = os.path.join(folder, f"{name}.log")
        self._lock = threading.Lock()
        self._started: subprocess.Popen[bytes] | None = None  # a template this process started
        self._failed_at: float | None = None  # when a template this process started died before it was ready
        self._ready = False  # whether the template this process started ever took a request

    # -- the template ----------------------------------------------------------

    def template_pid(self) -> int | None:
        """The pid of the running (or starting) template, from its pid file; None if it is not alive."""
        try:
            with open(self.pid_path) as handle:
                pid = int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if self._started is not None and self._started.pid == pid and self._started.poll() is not None:
            return None  # ours and ended (reaped here, so its pid may already be reused)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                alive = str(TEMPLATE_SCRIPT).encode() in handle.read()
        except OSError:
            return None
        return pid if alive else None

    def start(self) -> None:
        """Start a template unless one is running or starting (any process's); returns at once."""
        with self._lock, _file_lock(self.pid_path + ".lock"):
            if self.template_pid() is not None:
                return
            if self._started is not None and self._started.poll() is not None:
                if self._started.returncode == 0:
                    # it retired after its idle time (a template exits 0 only from serving, so it was ready; another
                    # client of this process, with a shorter kernel_fork_idle, may have been the one using it)
                    log.info("the kernel fork template (pid %s) retired when idle; starting a new one", self._started.pid)
                elif self._ready:  # it worked, then ended (killed): replace it
                    log.warning("the kernel fork template (pid %s) ended with %s; starting a new one", self._started.pid, self._started.returncode)
                else:
                    self._failed_at = time.monotonic()
                    warn_once(f"the fork template exited with {self._started.returncode} while starting (its log: {self.log_path})")
                self._started, self._ready = None, False
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER_FAILURE:
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)  # stale: its template is gone
            remove_stale_files(os.path.dirname(self.socket_path), keep=self.socket_path[: -len(".sock")])
            with open(self.log_path, "ab") as log_file:
                self._started = subprocess.Popen(
                    [self.python, str(TEMPLATE_SCRIPT), self.socket_path, ",".join(self.preload), str(self.idle), json.dumps(self.kernel_argv)],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=self.env,
                    cwd=os.path.dirname(self.socket_path), start_new_session=True,  # outlives us; no terminal Ctrl-C
                )  # fmt: skip
            with open(self.pid_path, "w") as handle:
                handle.write(str(self._started.pid))
            log.info("starting a kernel fork template (pid %s, preload %s)", self._started.pid, ",".join(self.preload) or "none")

    def wait_ready(self, timeout: float) -> bool:
        """Start the template if needed and wait until it takes requests (blocking); False if it did not."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._connectable():
                return True
            self.start()
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER_FAILURE:
                return False  # it died while starting (start() said so, once)
            time.sleep(0.02)
        return False

    def _connectable(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.socket_path)
            except OSError:
                return False
        self._ready = True
        return True

    def stop(self) -> None:
        """End the template (tests; a template otherwise ends itself when idle). Its kernels keep running."""
        pid = self.template_pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self._started is not None:
            self._started.wait()
            self._started = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    # -- kernels ---------------------------------------------------------------

    def spawn(
        self, argv: list[str], cwd: str, env: Mapping[str, str], stdout: int | None, stderr: int | None, timeout: float,
        adoptable: Mapping[str, Any] | None = None,
    ) -> ForkedProcess:
        """Fork one kernel (blocking: call it in a thread); ``NotReady`` if no template takes requests yet.

        ``adoptable``: the connection info the caller would give the kernel, if
        it can take the template's ready spare and its sockets and key instead
        (``ForkedProcess.connection``); None for a restart.
        """
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.socket_path)
        except OSError as exc:
            conn.close()
            self.start()
            raise NotReady(str(exc)) from None
        self._ready = True
        conn.settimeout(timeout)
        null = os.open(os.devnull, os.O_WRONLY) if stdout is None or stderr is None else None
        try:
            fds = [null if stdout is None else stdout, null if stderr is None else stderr]
            request = {"argv": argv[3:], "cwd": cwd, "env": dict(env), "owner": os.getpid(), **_spare_terms(adoptable)}
            socket.send_fds(conn, [json.dumps(request).encode()], fds)
            reply, pidfds, pending = fork_reply(conn)
        except (OSError, ValueError) as exc:
            conn.close()
            if self.template_pid() is None:  # it died (a new one is starting): as if it were not there yet
                self.start()
                raise NotReady(str(exc)) from None
            raise ForkFailed(f"the fork template did not answer: {exc}") from exc
        finally:
            if null is not None:
                os.close(null)
        if "pid" not in reply or not pidfds:
            conn.close()
            raise ForkFailed(reply.get("error", "no pid in the template's reply"))
        return ForkedProcess(int(reply["pid"]), pidfds[0], conn, pending, reply.get("connection"))


def _spare_terms(adoptable: Mapping[str, Any] | None) -> dict[str, Any]:
    """Whether a request may get the template's spare: a new kernel on unix sockets, unencrypted (the spare's are)."""
    spare_ok = adoptable is not None and adoptable.get("transport") == "ipc" and not adoptable.get("curve_secretkey")
    return {"spare_ok": spare_ok, "signature_scheme": adoptable.get("signature_scheme") if adoptable else None}


def adopted_connection(own: Mapping[str, Any], spare: Mapping[str, Any]) -> dict[str, Any]:
    """A manager's connection info with the spare kernel's sockets and key (as ``LocalProvisioner`` keeps it: the key as bytes)."""
    info = dict(own)
    info.update({name: spare[name] for name in ("transport", "ip", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port", "signature_scheme")})
    info["key"] = spare["key"].encode()
    return info


def runtime_dir() -> str:
    """``$TMPDIR/dsagent-fork-<uid>``: made 0700 and checked to be ours, so only this user reaches the sockets.

    The templates' sockets are here, and the local backend's kernels' ipc sockets (``local_sockets.ipc_sockets``).
    """
    folder = os.path.join(tempfile.gettempdir(), f"dsagent-fork-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ForkFailed(f"{folder} is not a folder only this user can use; remove it")
    return folder


def remove_stale_files(folder: str, keep: str = "", now: float | None = None) -> int:
    """Remove what ended processes left in the runtime folder a day ago or more; the number of files removed.

    Each template configuration leaves a pid file, its lock and a log (kept
    while it may be read: a template that died starting says why there), a
    killed template its socket, a killed kernel its unix sockets, a killed
    spare its connection file, and a killed owner its kernels' stream copies.
    Run when a template starts (rarely). A file is stale once it is old and nothing owns it: no living template for a pid
    file, no listener on a unix socket. ``keep``: the starting template's
    files (the path without its suffix).
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(folder, name)
        stem = os.path.join(folder, name.split(".", 1)[0])
        try:
            if stem == keep or now - os.lstat(path).st_mtime < STALE_AFTER_SECONDS:
                continue
            if name.endswith(".pid") and _pid_file_alive(path):
                continue
            if name.endswith((".pid.lock", ".log", ".sock")) and os.path.exists(stem + ".pid") and _pid_file_alive(stem + ".pid"):
                continue
            if name.startswith("k-") and _listening(path):
                continue
            # streams-*.bin: a kernel's stream copy (kernel_death.py) whose owner was killed before it removed it;
            # a living kernel silent for a day loses only its copy (it writes on into the unlinked file)
            if not name.endswith((".pid", ".pid.lock", ".log", ".sock", ".json")) and not name.startswith(("k-", "streams-")):
                continue  # not ours
            os.unlink(path)
            removed += 1
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed


def _pid_file_alive(path: str) -> bool:
    """Whether the template a pid file names is running."""
    try:
        with open(path) as handle:
            pid = int(handle.read().strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return str(TEMPLATE_SCRIPT).encode() in handle.read()
    except (OSError, ValueError):
        return False


def _listening(path: str) -> bool:
    """Whether a process accepts connections on the unix socket at ``path`` (a living kernel's)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True  # not a stream socket we can judge: leave it
    return True


def _template_env(env: Mapping[str, str]) -> dict[str, str]:
    """What the template starts with: what changes imports, and no more (its memory is every kernel's).

    Never a secret, even one a kernel is given on purpose: a forked kernel's
    ``/proc/self/environ`` is the template's, whatever its ``os.environ`` becomes.
    """
    return {k: v for k, v in env.items() if (k.startswith(IMPORT_ENV_PREFIXES) or k in TEMPLATE_ENV_KEYS) and not looks_secret(k)}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive lock between processes starting templates (flock: released if the holder dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- one client per configuration, per process -----------------------------------

_SERVERS: dict[tuple[Any, ...], ForkServer] = {}
_SERVERS_LOCK = threading.Lock()
_WARNED: set[str] = set()


def _forget_in_child() -> None:
    # a forked copy of this process (multiprocessing, Dask's fork start method) starts
    # with its own clients: the parent's lock may be held and its Popen is not ours
    global _SERVERS_LOCK
    _SERVERS.clear()
    _SERVERS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def fork_server_for(kernel_cmd: list[str], env: Mapping[str, str], preload: tuple[str, ...], idle: float) -> ForkServer:
    """This process's client of the template for kernels of this command line, import environment and preload list."""
    argv = template_argv(kernel_cmd)
    key = (kernel_cmd[0], argv, tuple(sorted(_template_env(env).items())), preload, idle, str(TEMPLATE_SCRIPT))
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None:
            server = _SERVERS[key] = ForkServer(kernel_cmd[0], env, preload, idle, argv)
        return server


def stop_all() -> None:
    """Stop the templates this process has used (tests); kernels forked from them keep running."""
    with _SERVERS_LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for server in servers:
        server.stop()


def warn_once(reason: str) -> None:
    """Log a fallback to a normal launch, once per reason and process."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        log.warning("kernel fork server unavailable (%s); launching kernels the normal way", reason)


class ForkingKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels are forked from a preloaded template when possible.

    The documented hook: ``_async_launch_kernel``. The provisioner stays the
    stock ``LocalProvisioner``; only its process object is a ``ForkedProcess``.
    """

    def __init__(self, *, preload: tuple[str, ...], start_timeout: float, idle: float, launch_arguments: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preload = preload
        self.launch_arguments = launch_arguments  # the extra_arguments its kernels are started with
        self.start_timeout = start_timeout
        self.idle = idle
        self.forked = False  # whether the current kernel process came from the template
        self.from_spare = False  # ... and was its spare: this manager adopted the spare's sockets and key
        self._exit_requested = False  # begin_shutdown() sent the shutdown request; shutdown_kernel() only waits
        self._launched = False  # a later launch is a restart: the clients keep the sockets of the first

    def fork_server(self, env: Mapping[str, str]) -> ForkServer | None:
        """The template client this manager's kernels would come from; None if they cannot be forked."""
        cmd = self.format_kernel_cmd(extra_arguments=list(self.launch_arguments))
        return fork_server_for(cmd, env, self.preload, self.idle) if forkable(cmd) else None

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        provisioner = self.provisioner
        self.forked = self.from_spare = False
        adoptable, self._launched = (None if self._launched else provisioner.connection_info), True
        if type(provisioner) is LocalProvisioner and forkable(kernel_cmd):
            try:
                process = await asyncio.to_thread(self._spawn, kernel_cmd, kw, adoptable)
            except NotReady:
                pass  # the template is starting (in the background): this kernel launches normally
            except ForkFailed as exc:
                warn_once(str(exc))
            else:
                provisioner.process = process
                provisioner.pid = process.pid
                provisioner.pgid = process.pid  # the child calls setsid()
                provisioner.cwd = kw.get("cwd") or os.getcwd()
                self.forked, self.from_spare = True, process.connection is not None
                if process.connection is not None:  # the template's spare: its sockets and key become this manager's
                    provisioner.connection_info = adopted_connection(provisioner.connection_info, process.connection)
                self._reconcile_connection_info(provisioner.connection_info)
                return
        elif type(provisioner) is not LocalProvisioner:
            warn_once(f"the kernelspec uses its own provisioner {type(provisioner).__name__}")
        else:
            warn_once(f"the kernelspec does not start `python -m ipykernel_launcher` ({kernel_cmd[:3]})")
        await super()._async_launch_kernel(kernel_cmd, **kw)

    # jupyter_client's ``in_pending_state`` decorator ends start and shutdown with a 10 ms
    # sleep ("so tests can capture the state"): 20 ms of every forked kernel's ~100 ms cycle
    async def _async_start_kernel(self, **kw: Any) -> None:
        await _without_settle_sleep(self, _START_KERNEL, kw=kw)

    async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        if self._exit_requested and not now and not restart:
            self._exit_requested = False
            await _without_settle_sleep(self, _finish_requested_shutdown, restart=False)
            return
        self._exit_requested = False
        await _without_settle_sleep(self, _SHUTDOWN_KERNEL, now=now, restart=restart)

    async def begin_shutdown(self) -> None:
        """Interrupt the kernel and send its shutdown request now, without waiting for it to exit.

        What ``shutdown_kernel(now=False)`` does first; its later call then
        only waits for the exit (killing the kernel after ``shutdown_wait_time``)
        and cleans up. Nothing here suspends, so the request is on its way
        when this returns: a caller that puts the waiting in a background
        task and then blocks its event loop (a test polling with psutil, a
        sync caller) no longer leaves the kernel running until the loop
        turns (the pool test's 10 s "used kernel still alive").
        """
        if not self.owns_kernel or not self.has_kernel or self.shutting_down:
            return
        self.shutting_down = True  # as shutdown_kernel: the restarter must not revive it
        self.stop_restarter()
        await self._async_interrupt_kernel()
        await self._async_request_shutdown()
        self._exit_requested = True

    start_kernel = _async_start_kernel  # type: ignore[assignment]  # AsyncKernelManager binds these names to the originals
    shutdown_kernel = _async_shutdown_kernel  # type: ignore[assignment]

    async def _async_wait(self, pollinterval: float = 0.1) -> None:
        # a forked kernel exits ~30 ms after its shutdown request; checking every 0.1 s (jupyter_client's
        # interval) would add half that again to every fresh-kernel job of a sweep: its pidfd wakes us instead
        process = getattr(self.provisioner, "process", None)
        if isinstance(process, ForkedProcess):
            await process.exited()
        await super()._async_wait(pollinterval)

    async def wait_started(self, timeout: float) -> None:
        """Wait until a forked kernel has bound its sockets, so its client connects at once (no-op otherwise)."""
        process = getattr(self.provisioner, "process", None)
        if isinstance(process, ForkedProcess):
            await process.started(timeout)  # a kernel that died meanwhile is the caller's kernel_info wait to report

    def _spawn(self, kernel_cmd: list[str], kw: Mapping[str, Any], adoptable: Mapping[str, Any] | None) -> ForkedProcess:
        return fork_kernel(kernel_cmd, kw, self.preload, self.idle, self.start_timeout, adoptable=adoptable)


def fork_kernel(
    kernel_cmd: list[str], launch_kw: Mapping[str, Any], preload: tuple[str, ...], idle: float, timeout: float, *,
    wait_for_template: bool = False, adoptable: Mapping[str, Any] | None = None,
) -> ForkedProcess:
    """Fork the kernel jupyter_client would launch with ``kernel_cmd`` and Popen-style ``launch_kw`` (blocking).

    ``NotReady`` while no template takes requests, unless ``wait_for_template``: then
    it waits for the template to start (up to ``timeout``) and ``ForkFailed`` if it does not.
    ``adoptable``: see ``ForkServer.spawn``.
    """
    env = launch_kw.get("env") or dict(os.environ)
    server = fork_server_for(kernel_cmd, env, preload, idle)
    args = (kernel_cmd, str(launch_kw.get("cwd") or os.getcwd()), env, _fd(launch_kw.get("stdout")), _fd(launch_kw.get("stderr")), timeout, adoptable)
    try:
        return server.spawn(*args)
    except NotReady:
        if not wait_for_template:
            raise
        if not server.wait_ready(timeout):
            raise ForkFailed(f"the kernel fork template did not start (its log: {server.log_path})") from None
        return server.spawn(*args)


#: the undecorated jupyter_client methods (None if a release stops wrapping them: then the originals run)
_START_KERNEL = getattr(AsyncKernelManager._async_start_kernel, "__wrapped__", None)
_SHUTDOWN_KERNEL = getattr(AsyncKernelManager._async_shutdown_kernel, "__wrapped__", None)


async def _finish_requested_shutdown(km: AsyncKernelManager, restart: bool = False) -> None:
    """The rest of ``shutdown_kernel(now=False)`` once ``begin_shutdown`` sent the request: wait (then kill), clean up."""
    await km._async_finish_shutdown(restart=restart)
    await km._async_cleanup_resources(restart=restart)


async def _without_settle_sleep(km: AsyncKernelManager, inner: Any, kw: Mapping[str, Any] | None = None, **args: Any) -> None:
    """What ``in_pending_state`` does around ``inner`` (the ``ready`` future), minus its sleep."""
    if inner is None:  # not wrapped as expected: the stock method, sleep and all
        name = "_async_shutdown_kernel" if kw is None else "_async_start_kernel"
        await getattr(AsyncKernelManager, name)(km, **(kw or {}), **args)
        return
    if km._attempted_start or not km._ready:
        km._ready = asyncio.get_running_loop().create_future()
    try:
        await inner(km, **(kw or {}), **args)
    except Exception as exc:
        km._ready.set_exception(exc)
        raise
    if km.owns_kernel:
        km._ready.set_result(None)


async def warm_fork_server(km: ForkingKernelManager, env: Mapping[str, str], timeout: float) -> bool:
    """Start the template ``km``'s kernels would be forked from and wait until it takes requests.

    Kernels started before that launch normally; callers that start many
    (a sweep, a test module) call this first. False if forking is not possible.
    """
    try:
        server = km.fork_server(env)
    except Exception as exc:  # no such kernelspec, an unusable runtime folder: kernels launch normally
        warn_once(str(exc))
        return False
    return server is not None and await asyncio.to_thread(server.wait_ready, timeout)


def _fd(stream: Any) -> int | None:
    """The descriptor of a Popen-style stdout/stderr argument (a file, a descriptor or None)."""
    if stream is None or stream in (subprocess.DEVNULL, subprocess.PIPE):
        return None
    return stream if isinstance(stream, int) else stream.fileno()


if sys.platform != "linux":  # pragma: no cover - pidfds and SCM_RIGHTS as used here are Linux's
    ForkingKernelManager = AsyncKernelManager  # type: ignore[misc,assignment]
