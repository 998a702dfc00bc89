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
import atexit
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from jupyter_client import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner

__all__ = ["ForkServer", "ForkedProcess", "ForkingKernelManager", "fork_server_for", "preload_list", "stop_all"]

log = logging.getLogger(__name__)

TEMPLATE_SCRIPT = Path(__file__).with_name("forktemplate.py")
#: environment variables that change what an import does: a template is shared only by kernels that agree on them
IMPORT_ENV_PREFIXES = ("PYTHON", "MPL", "OMP_", "OPENBLAS", "MKL_", "NUMEXPR", "LD_", "VIRTUAL_ENV", "CONDA_PREFIX", "JUPYTER", "IPYTHON")
#: how long a dead kernel's exit code may take to arrive from the template (it reaps at once)
EXIT_CODE_WAIT = 1.0
#: exit code reported when the template died before it could say how the kernel ended
UNKNOWN_EXIT = 255


class ForkFailed(RuntimeError):
    """The template could not fork a kernel; the caller launches one the normal way."""


def preload_list(setting: str) -> tuple[str, ...]:
    """The ``kernel_preload`` setting as module names."""
    return tuple(n.strip() for n in setting.split(",") if n.strip())


def forkable(kernel_cmd: list[str]) -> bool:
    """Whether ``kernel_cmd`` starts an ipykernel the template can become (``PY -m ipykernel_launcher ...``)."""
    return len(kernel_cmd) >= 3 and kernel_cmd[1:3] in (["-m", "ipykernel_launcher"], ["-m", "ipykernel"]) and os.path.isabs(kernel_cmd[0])


class ForkedProcess:
    """What ``LocalProvisioner`` expects of a Popen, for a kernel forked by the template (not our child)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int, conn: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd  # names this process even after its pid is reused
        self._conn = conn  # the template writes the exit code here
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
                self.returncode = self._exit_code()
            return self.returncode

    def _exit_code(self) -> int:
        try:
            self._conn.settimeout(EXIT_CODE_WAIT)
            data = self._conn.recv(4096)
            code = int(json.loads(data)["exit"]) if data else UNKNOWN_EXIT
        except (OSError, ValueError, KeyError):
            code = UNKNOWN_EXIT  # the template died with the kernel's status
        self._conn.close()
        os.close(self._pidfd)
        return code

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(["forked kernel", str(self.pid)], timeout or 0)
        code = self.poll()
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __del__(self) -> None:
        if self.returncode is None:
            try:
                os.close(self._pidfd)
                self._conn.close()
            except OSError:
                pass


class ForkServer:
    """One template process for one kernel configuration, started on first use and replaced if it dies."""

    def __init__(self, python: str, env: Mapping[str, str], preload: tuple[str, ...], log_path: Path | None = None) -> None:
        self.python = python
        self.env = dict(env)
        self.preload = preload
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._lock = threading.Lock()

    @property
    def socket_path(self) -> str:
        assert self._dir is not None
        return os.path.join(self._dir, "template.sock")

    def ensure_started(self, timeout: float) -> None:
        """Start the template (or a new one after its death) and wait until it has imported everything."""
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                return
            if self.process is not None:
                log.warning("kernel fork template (pid %s) ended with %s; starting a new one", self.process.pid, self.process.returncode)
            self._stop_locked()
            self._start_locked(timeout)

    def _start_locked(self, timeout: float) -> None:
        self._dir = tempfile.mkdtemp(prefix="dsagent-fork-")  # 0700: only this user can ask for kernels
        err = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [self.python, str(TEMPLATE_SCRIPT), self.socket_path, ",".join(self.preload)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=self.env,
                cwd=self._dir, start_new_session=True,  # a terminal's Ctrl-C is not for it
            )  # fmt: skip
        finally:
            if err is not subprocess.DEVNULL:
                err.close()
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self._stop_locked()
            raise ForkFailed(f"the fork template did not start within {timeout:g}s" if not ready else "the fork template exited while starting")
        log.info("kernel fork template ready: %s", line.decode().strip())

    def spawn(self, argv: list[str], cwd: str, env: Mapping[str, str], stdout: int | None, stderr: int | None, timeout: float) -> ForkedProcess:
        """Fork one kernel; blocking (call it in a thread)."""
        self.ensure_started(timeout)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        null = None
        try:
            conn.connect(self.socket_path)
            if stdout is None or stderr is None:
                null = os.open(os.devnull, os.O_WRONLY)
            fds = [null if stdout is None else stdout, null if stderr is None else stderr]
            request = {"argv": argv[3:], "cwd": cwd, "env": dict(env), "owner": os.getpid()}
            socket.send_fds(conn, [json.dumps(request).encode()], fds)
            data, pidfds, _, _ = socket.recv_fds(conn, 4096, 1)
            reply = json.loads(data) if data else {"error": "the template closed the connection"}
        except (OSError, ValueError) as exc:
            conn.close()
            raise ForkFailed(f"cannot reach the fork template: {exc}") from exc
        finally:
            if null is not None:
                os.close(null)
        if "pid" not in reply or not pidfds:
            conn.close()
            raise ForkFailed(reply.get("error", "no pid in the template's reply"))
        conn.settimeout(None)
        return ForkedProcess(int(reply["pid"]), pidfds[0], conn)

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()  # its kernels are independent of it
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait for anything
                pass
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe is not None:
                    pipe.close()
            self.process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# -- one fork server per configuration, per process --------------------------

_SERVERS: dict[tuple[Any, ...], ForkServer] = {}
_SERVERS_LOCK = threading.Lock()
_WARNED: set[str] = set()


def _forget_in_child() -> None:
    # a forked copy of this process (multiprocessing, Dask's fork start method) must
    # not share the parent's templates: it would read its kernels' exit codes
    _SERVERS.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def fork_server_for(kernel_cmd: list[str], env: Mapping[str, str], preload: tuple[str, ...], log_path: Path | None = None) -> ForkServer:
    """The process's fork server for kernels of this interpreter, import environment and preload list."""
    import_env = tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_ENV_PREFIXES)))
    key = (kernel_cmd[0], import_env, preload)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None:
            server = _SERVERS[key] = ForkServer(kernel_cmd[0], env, preload, log_path)
        return server


@atexit.register
def stop_all() -> None:
    """Stop every template of this process (kernels forked from them keep running until shut down)."""
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

    def __init__(self, *, preload: tuple[str, ...], start_timeout: float, template_log: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preload = preload
        self.start_timeout = start_timeout
        self.template_log = template_log
        self.forked = False  # whether the current kernel process came from the template

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        provisioner = self.provisioner
        self.forked = False
        if type(provisioner) is LocalProvisioner and forkable(kernel_cmd):
            try:
                process = await asyncio.to_thread(self._spawn, kernel_cmd, kw)
            except ForkFailed as exc:
                warn_once(str(exc))
            else:
                provisioner.process = process
                provisioner.pid = process.pid
                provisioner.pgid = process.pid  # the child calls setsid()
                provisioner.cwd = kw.get("cwd") or os.getcwd()
                self.forked = True
                self._reconcile_connection_info(provisioner.connection_info)
                return
        elif type(provisioner) is not LocalProvisioner:
            warn_once(f"the kernelspec uses its own provisioner {type(provisioner).__name__}")
        else:
            warn_once(f"the kernelspec does not start `python -m ipykernel_launcher` ({kernel_cmd[:3]})")
        await super()._async_launch_kernel(kernel_cmd, **kw)

    def _spawn(self, kernel_cmd: list[str], kw: Mapping[str, Any]) -> ForkedProcess:
        env = kw.get("env") or dict(os.environ)
        server = fork_server_for(kernel_cmd, env, self.preload, self.template_log)
        return server.spawn(kernel_cmd, str(kw.get("cwd") or os.getcwd()), env, _fd(kw.get("stdout")), _fd(kw.get("stderr")), self.start_timeout)


def _fd(stream: Any) -> int | None:
    """The descriptor of a Popen-style stdout/stderr argument (a file, a descriptor or None)."""
    if stream is None or stream in (subprocess.DEVNULL, subprocess.PIPE):
        return None
    return stream if isinstance(stream, int) else stream.fileno()


if sys.platform != "linux":  # pragma: no cover - pidfds and SCM_RIGHTS as used here are Linux's
    ForkingKernelManager = AsyncKernelManager  # type: ignore[misc,assignment]
