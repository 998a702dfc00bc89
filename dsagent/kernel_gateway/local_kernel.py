"""One kernel process of the local backends (``local``, and ``sandbox`` built on it): the kernel as the backend
holds it (``StartedKernel``), waiting until a new or restarted one answers (``wait_ready``), killing one without
awaiting (``kill_now``; every one still running when the process exits), the kernelspec finder all of them share,
and the warm-up cell a pooled kernel runs before its handout.

``local.py`` launches kernels and makes sessions of them with these.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import queue
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelClient, AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager

from dsagent.kernel_gateway.forkserver import preload_list
from dsagent.kernel_gateway.kernel_death import StreamCopy

__all__ = ["ALIVE_POLL_SECONDS", "LIVE_MANAGERS", "StartedKernel", "is_idle_of", "kernel_spec_manager", "kill_now", "log_tail",
           "remove_if_empty", "wait_ready", "warm_up_cell"]

#: how often a silent kernel is checked for being alive; bounds death detection
ALIVE_POLL_SECONDS = 0.2
#: how long the kernel_info status may lag its reply before the question is asked again (see wait_ready)
IOPUB_RETRY_SECONDS = 0.02
#: how long a kernel_info request may go unanswered before it is sent again (see wait_ready)
REASK_SECONDS = 1.0
#: what a pooled kernel runs before its handout: displays a value (formatters,
#: rich output on iopub) and leaves no name behind in the user namespace
_WARM_UP_CELL = "__import__('IPython.display', fromlist=['display']).display(0)"
#: the managers of kernels started and not shut down yet: killed when the process exits
LIVE_MANAGERS: "weakref.WeakSet[AsyncKernelManager]" = weakref.WeakSet()


def kill_now(km: AsyncKernelManager) -> None:
    """Kill a kernel without awaiting: safe in atexit and while being cancelled."""
    process = getattr(km.provisioner, "process", None) if km.provisioner else None
    if process is not None and process.poll() is None:
        process.kill()
        try:
            process.wait(timeout=5)
        except Exception:  # pragma: no cover - the kernel is killed either way
            pass
    give_back = getattr(km, "_give_back", None)  # a sandbox returns a lent work dir to its owner
    if give_back is not None:
        give_back()
    try:
        km.cleanup_connection_file()
    except Exception:
        pass


#: environment variables that decide where kernelspecs are looked for (jupyter_core's paths, IPython's dir)
_KERNELSPEC_ENV_PREFIXES = ("JUPYTER", "XDG_", "IPYTHON", "HOME", "VIRTUAL_ENV", "CONDA_PREFIX")


def kernel_spec_manager() -> KernelSpecManager:
    """One kernelspec finder per search path, for all of this process's kernel managers (as jupyter_server shares one).

    Each manager would otherwise make its own and work out its kernel dirs
    again (~3 ms of every fresh kernel's start, most of it finding the
    Jupyter and IPython data folders); the kernelspec itself is still read
    from disk for each kernel, and a changed search path gets a new finder.
    """
    return _kernel_spec_manager_for(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_KERNELSPEC_ENV_PREFIXES))))


@functools.lru_cache(maxsize=8)
def _kernel_spec_manager_for(env: tuple[tuple[str, str], ...]) -> KernelSpecManager:
    return KernelSpecManager()


@atexit.register
def _kill_leftover_kernels() -> None:
    for km in list(LIVE_MANAGERS):
        kill_now(km)


@dataclass
class StartedKernel:
    """A started, ready kernel and the folder it was launched in."""

    km: AsyncKernelManager
    kc: AsyncKernelClient
    launch_dir: Path
    log_file: Any  # kept open: a restart launches again with the same arguments
    stream_copy: StreamCopy | None = None  # None: the kernel keeps no copy (its runtime folder was unusable)


async def wait_ready(km: AsyncKernelManager, kc: AsyncKernelClient, timeout: float) -> None:
    """Return once the kernel answers on shell and its iopub reaches us, drained up to that answer.

    ``kc.wait_for_ready`` ends with 0.2 s of listening for silence on iopub and
    retries only after a second: fine for a 1 s kernel start, most of a forked
    kernel's ~0.1 s start. Here the proof that iopub is connected is the idle
    status of our own ``kernel_info`` request; until it shows, ask again. The
    status follows the reply at once, so the first new question goes out
    ``IOPUB_RETRY_SECONDS`` after the reply (then twice as long each time):
    about one forked kernel in twenty publishes it before our subscription
    reaches the kernel, and a 0.2 s wait for it was 10 ms on average of every
    fresh kernel's start.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    msg_id = kc.kernel_info()
    asked = loop.time()
    answered = False
    retry = IOPUB_RETRY_SECONDS
    while loop.time() < end:
        try:
            if not answered:
                msg = await kc.get_shell_msg(timeout=ALIVE_POLL_SECONDS)
                if msg["parent_header"].get("msg_id") == msg_id:
                    answered = True
                    kc._handle_kernel_info_reply(msg)  # the protocol version adaptation wait_for_ready does
                continue
            msg = await kc.get_iopub_msg(timeout=retry)
            if is_idle_of(msg, msg_id):
                return
        except queue.Empty:
            if not await km.is_alive():
                raise RuntimeError("the kernel died before it replied to kernel_info")
            if answered:  # its status went out before iopub was connected: ask again
                msg_id, answered, asked = kc.kernel_info(), False, loop.time()
                retry = min(2 * retry, ALIVE_POLL_SECONDS)
            elif loop.time() - asked >= REASK_SECONDS:
                # after a restart the question may have gone to the old kernel's connection: ask again, as
                # kc.wait_for_ready does every second
                msg_id, asked = kc.kernel_info(), loop.time()
    raise RuntimeError(f"the kernel did not answer within {timeout:g}s")


def warm_up_cell(preload: str) -> str:
    """The pool's warm-up cell: also imports the preload list, so a handed-out kernel's first plot is not slowed by imports.

    Runs in a throwaway namespace (no names left behind); a module that is not
    installed is skipped, as the fork template does.
    """
    names = list(preload_list(preload))
    if "matplotlib" in names:
        names += ["matplotlib.pyplot", "matplotlib_inline.backend_inline"]
    if not names:
        return _WARM_UP_CELL
    imports = f"for m in {names!r}:\n try: __import__(m)\n except Exception: pass\n"
    return f"exec({imports!r}, {{}})\n{_WARM_UP_CELL}"


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def is_idle_of(msg: dict[str, Any], msg_id: str) -> bool:
    return (
        msg["msg_type"] == "status"
        and msg["parent_header"].get("msg_id") == msg_id
        and msg["content"].get("execution_state") == "idle"
    )


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
