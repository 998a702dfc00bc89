"""The template process of the kernel fork server: imports once, then forks one ipykernel per request.

Run as a script (``python forktemplate.py SOCKET PRELOAD IDLE_SECONDS``),
never imported by dsagent: whatever it imports is inherited by every kernel
forked from it, so it imports only ipykernel, IPython and the preload list,
never dsagent itself. Clients (``forkserver.ForkServer`` in any dsagent
process of the same user) talk to it over a unix socket in an owner-only
folder; connections from another uid are refused (SO_PEERCRED):

- request: one JSON message ``{"argv", "cwd", "env", "owner"}`` with the
  kernel's stdout and stderr file descriptors attached (SCM_RIGHTS);
- reply: ``{"pid"}`` with a pidfd of the new kernel attached, or ``{"error"}``;
- later, on the same connection: ``{"exit": code}`` once the kernel ended and
  this process (its parent) reaped it; ``code`` follows ``Popen.returncode``.

The template never starts a thread or a ZMQ context, so a fork copies one
thread and no sockets; each child makes its own after the fork. It outlives
the process that started it (the next ``dsagent run`` finds it) and exits
after IDLE_SECONDS with no request and no kernel alive. Each kernel ends with
the process that asked for it (it watches that pid itself).

The socket appears at SOCKET only once the imports are done (bound under a
temporary name, then renamed), so a client that can connect gets a fork at
once; one that cannot launches its kernel the normal way meanwhile.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback

#: what ipykernel imports while a kernel initializes (found by diffing sys.modules in a
#: forked kernel); imported here so each kernel does not repeat it (debugpy alone: ~0.2 s)
KERNEL_MODULES = (
    "IPython", "ipykernel_launcher", "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
    "IPython.core.completerlib", "IPython.core.debugger", "IPython.core.oinspect", "IPython.extensions.storemagic",
    "IPython.utils.wildcard", "pdb", "cProfile", "faulthandler", "mimetypes", "psutil", "resource",
    "tornado.gen", "tornado.locks", "tornado.queues", "tornado.platform.asyncio", "http.server", "xmlrpc.server",
    "encodings.idna", "setproctitle",
)  # fmt: skip
#: how long a kernel's exit waits for each of its threads (an interpreter would wait forever)
SHUTDOWN_JOIN_SECONDS = 5.0
#: the largest request (argv + env) a kernel launch sends
MAX_REQUEST = 1 << 20


def _preload(names: list[str]) -> None:
    """Import the kernel machinery and the preload list; a module that fails to import is skipped."""
    # ipykernel sets this default backend when a kernel starts; set it now so the
    # preloaded pyplot resolves to the inline backend exactly as in a kernel
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for name in KERNEL_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # another ipykernel version may not have it: the kernel imports what it needs
            print(f"fork template: cannot import {name}: {exc}", file=sys.stderr, flush=True)
    for name in names:
        try:
            importlib.import_module(name)
            if name == "matplotlib":  # "ready" means pyplot and the inline backend are loaded too
                importlib.import_module("matplotlib.pyplot")
                importlib.import_module("matplotlib_inline.backend_inline")
        except Exception as exc:  # a missing package makes preloading it pointless, not the kernel broken
            print(f"fork template: cannot preload {name}: {exc}", file=sys.stderr, flush=True)


def _warm_command_line() -> None:
    """Parse a kernel's command line once here, so every kernel finds argparse's and traitlets' caches filled.

    ``IPKernelApp.parse_command_line`` builds a parser of every configurable
    class's flags and compiles its patterns: 10-50 ms of each forked kernel's
    start (measured), identical in every kernel. A throwaway app (not the
    singleton ``instance()``) leaves no state but those caches behind.
    """
    try:
        from ipykernel.kernelapp import IPKernelApp

        IPKernelApp().parse_command_line(["-f", os.devnull, "--HistoryManager.hist_file=:memory:", "--IPythonKernel._execute_sleep=0",
                                          "--IPKernelApp.parent_handle=0"])  # fmt: skip
    except Exception as exc:  # another ipykernel version: the kernels parse their own, as before
        print(f"fork template: cannot warm the command-line parser: {exc}", file=sys.stderr, flush=True)


class Template:
    """The accept/fork/reap loop of one template process."""

    def __init__(self, listener: socket.socket, idle: float) -> None:
        self.listener = listener
        self.idle = idle
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        self.children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)

    def serve(self) -> None:
        while True:
            events = self.selector.select(self.idle)
            if not events and not self.children:
                return  # nobody asked for a kernel for a while and none is left to reap
            for key, _ in events:
                if key.data == "accept":
                    conn, _ = self.listener.accept()
                    if _peer_uid(conn) == os.getuid():
                        self._handle(conn)
                    else:
                        conn.close()  # the folder is owner-only; this is the second lock
                else:
                    self._reap(key.fd)

    def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(10)
            data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 4)
            request = json.loads(data)
            if threading.active_count() != 1:  # a fork would copy a thread's locks in a held state
                raise RuntimeError(f"the template runs {threading.active_count()} threads")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except Exception as exc:
            for fd in fds:
                os.close(fd)
            _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
            conn.close()
            return
        if pid == 0:
            _become_kernel(self, conn, request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)  # before any reaping: it names this child, never a reused pid
        try:
            socket.send_fds(conn, [json.dumps({"pid": pid}).encode()], [pidfd])
        except OSError:
            pass  # the owner gave up waiting; the kernel is still ours to reap
        self.children[pidfd] = (pid, conn)
        self.selector.register(pidfd, selectors.EVENT_READ, "child")

    def _reap(self, pidfd: int) -> None:
        pid, conn = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
        conn.close()

    def close_in_child(self, keep: socket.socket) -> None:
        """Close everything of the template in a new kernel, through the owning objects.

        Closing only the numbers would let a stale Python object close a
        descriptor number later reused by the kernel's ZMQ sockets.
        """
        self.selector.close()
        self.listener.close()
        for pidfd, (_, conn) in self.children.items():
            os.close(pidfd)
            conn.close()
        self.children.clear()
        keep.close()


def _peer_uid(conn: socket.socket) -> int:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode())
    except OSError:
        pass  # the owner closed the connection: nobody is waiting for this


def _watch_owner(owner: int) -> None:
    """End this kernel when the process that asked for it ends (as ipykernel's parent poller would)."""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(1)
    import select

    def wait() -> None:
        select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=wait, name="dsagent-owner-watch", daemon=True).start()


def _reseed() -> None:
    """Fresh random streams: a forked child would otherwise repeat its siblings' numbers."""
    import random

    random.seed()  # CPython also does this at fork; kept for the numpy seed's sake of symmetry
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # the legacy global RandomState; default_rng() seeds from the OS anyway


def _become_kernel(template: Template, conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become a fresh ipykernel with the request's argv, cwd, env and stdio."""
    code = 1
    try:
        os.setsid()  # its own process group: jupyter_client interrupts with killpg
        template.close_in_child(conn)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for target, fd in zip((1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if "setproctitle" in sys.modules:  # ps, psutil and kernel finders then see a kernel, not a template
            # (before the environment is replaced: setproctitle needs the original environ block)
            sys.modules["setproctitle"].setproctitle(" ".join([sys.executable, "-m", "ipykernel_launcher", *request["argv"]]))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _reseed()
        _watch_owner(int(request["owner"]))
        code = _run_kernel(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            _finalize()
        finally:
            os._exit(code)


def _finalize() -> None:
    """What interpreter exit does, in its order, before ``os._exit`` (this stack is the template's).

    Non-daemon threads first: ipykernel's control thread may still be flushing
    the reply to ``shutdown_request`` through the iopub thread, which an atexit
    handler stops (in that order a flush waits 10 s for nothing).
    """
    import atexit

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=SHUTDOWN_JOIN_SECONDS)
    atexit._run_exitfuncs()  # ipykernel's and IPython's, and the user's own
    sys.stdout.flush()
    sys.stderr.flush()


def _run_kernel(argv: list[str]) -> int:
    """What ``python -m ipykernel_launcher ARGS`` does, plus the inline backend's hook-up."""
    import ipykernel_launcher
    from ipykernel.kernelapp import IPKernelApp

    del sys.path[0]  # this script's folder; IPython's init_path adds the work dir as a kernel has it
    sys.argv = [ipykernel_launcher.__file__, *argv]
    # the parent poller would see this template as the parent; _watch_owner does its job
    app = IPKernelApp.instance()
    app.initialize([*argv, "--IPKernelApp.parent_handle=0"])
    if "matplotlib_inline.backend_inline" in sys.modules and app.shell is not None:
        # the preloaded backend module cannot hook into a shell that did not exist at its
        # import; %matplotlib inline does exactly that hook-up now
        app.shell.enable_matplotlib("inline")
    app.start()
    _let_control_finish(app)
    return 0


def _let_control_finish(app: object) -> None:
    """Wait until the control thread is done with the message it is handling (the shutdown request).

    Its last step flushes output through the iopub thread, which ipykernel's
    exit handler stops before it joins the control thread; a fork exits fast
    enough to lose that race every few kernels (then the flush waits 10 s).
    """
    control = getattr(app, "control_thread", None)
    loop = getattr(control, "io_loop", None)
    if loop is None or not control.is_alive():
        return
    done = threading.Event()
    loop.add_callback(done.set)  # runs once the handler in progress has returned
    done.wait(SHUTDOWN_JOIN_SECONDS)


def main(argv: list[str]) -> None:
    path, preload, idle = argv[0], [n.strip() for n in argv[1].split(",") if n.strip()], float(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the owner, not the template
    started = time.perf_counter()
    _preload(preload)
    _warm_command_line()
    # what the imports made is every kernel's and never garbage: keep collections out of it
    # (a kernel's gc.collect() at exit took 0.7 s over it, and wrote to, so un-shared, its pages)
    gc.collect()
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    os.chmod(staging, 0o600)
    listener.listen(64)
    os.rename(staging, path)  # clients connect only once everything is imported
    inode = os.stat(path).st_ino
    print(json.dumps({"ready": os.getpid(), "socket": path, "seconds": round(time.perf_counter() - started, 3)}), file=sys.stderr, flush=True)
    try:
        Template(listener, idle).serve()
    finally:
        try:
            if os.stat(path).st_ino == inode:  # not a successor's socket
                os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
