"""The template process of the kernel fork server: imports once, then forks ipykernels, one kept ready ahead.

Run as a script (``python forktemplate.py SOCKET PRELOAD IDLE_SECONDS KERNEL_ARGV``),
never imported by dsagent: whatever it imports is inherited by every kernel
forked from it, so it imports only ipykernel, IPython and the preload list,
never dsagent itself. Clients (``forkserver.ForkServer`` in any dsagent
process of the same user) talk to it over a unix socket in an owner-only
folder; connections from another uid are refused (SO_PEERCRED):

- request: one JSON message ``{"argv", "cwd", "env", "owner", "spare_ok",
  "signature_scheme"}`` with the kernel's stdout and stderr file descriptors
  attached (SCM_RIGHTS);
- reply: ``{"pid"}`` with a pidfd of the new kernel attached, or ``{"error"}``;
  ``{"pid", "connection"}`` when the kernel is the spare (below): the client
  then uses its ``connection`` (unix sockets and key) instead of its own;
- later, on the same connection, one JSON object a line: ``{"started": pid}``
  from the kernel itself once its sockets are bound (the client connects
  then, not before: zmq's reconnect back-off would
  otherwise add up to its interval to a start), and ``{"exit": code}`` once
  the kernel ended and this process (its parent) reaped it; ``code`` follows
  ``Popen.returncode``.

The template never starts a thread or a ZMQ context, so a fork copies one
thread and no sockets; each child makes its own after the fork. It outlives
the process that started it (the next ``dsagent run`` finds it) and exits
after IDLE_SECONDS with no request and no kernel alive. Each kernel ends with
the process that asked for it (it watches that pid itself).

KERNEL_ARGV (JSON) is the command line of the kernels it serves after
``-m ipykernel_launcher``, with ``{connection_file}`` for the one argument
that differs per kernel: the template builds the kernel application's
configuration and its IPython shell for it once (``_prebuild``), and forks only
for requests with that command line.

The spare: while it serves, the template keeps one kernel forked and
initialized ahead of the next request (``forkkernel.become_spare``), on a
connection file of its own making. A request that may adopt it (``spare_ok``:
a new kernel, not a restart, which must keep its sockets) gets it: its start
then costs what is the request's own (stdio, work dir, environment, startup
code), and the next spare initializes on the other core meanwhile. Only for
prebuilt kernels; a spare that ends unclaimed (killed) is replaced, up to
SPARE_DEATHS_ALLOWED times.

The socket appears at SOCKET only once the imports are done (bound under a
temporary name, then renamed), so a client that can connect gets a fork at
once; one that cannot launches its kernel the normal way meanwhile.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.util
import json
import logging
import os
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from typing import Any, NamedTuple

#: what ipykernel imports while a kernel initializes (found by diffing sys.modules in a
#: forked kernel); imported here so each kernel does not repeat it (debugpy alone: ~0.2 s)
KERNEL_MODULES = (
    "IPython", "ipykernel_launcher", "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
    "IPython.core.completerlib", "IPython.core.debugger", "IPython.core.oinspect", "IPython.extensions.storemagic",
    "IPython.utils.wildcard", "pdb", "cProfile", "faulthandler", "mimetypes", "psutil", "resource",
    "tornado.gen", "tornado.locks", "tornado.queues", "tornado.platform.asyncio", "http.server", "xmlrpc.server",
    "encodings.idna", "setproctitle", "sqlite3", "IPython.core.magics.execution", "IPython.core.magic_arguments",
    "IPython.core.logger", "IPython.core.magics.ast_mod", "IPython.utils.module_paths",
)  # fmt: skip
#: the spare kernel's unix sockets: ``<folder>/k-<name>-<port>`` for these ports (the longest path a socket can have: 107)
SPARE_PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
MAX_SOCKET_PATH = 100
#: the message signature scheme of the spare's connection file (jupyter_client's default)
SPARE_SIGNATURE_SCHEME = "hmac-sha256"
#: spares that may end unclaimed (killed: someone's `pkill -f ipykernel`) before the template stops making them
SPARE_DEATHS_ALLOWED = 3


def _load_kernel_module() -> Any:
    """``forkkernel.py`` from this script's folder, under a name no user module has (every kernel inherits it)."""
    spec = importlib.util.spec_from_file_location("_dsagent_forkkernel", os.path.join(os.path.dirname(os.path.abspath(__file__)), "forkkernel.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


forkkernel = _load_kernel_module()


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


def _prebuild(argv: list[str]) -> bool:
    """Build, once, what every kernel with this command line builds alike: the app's configuration and the IPython shell.

    Two thirds of a forked kernel's own start went to ``IPKernelApp.initialize()``
    redoing this (argparse over every configurable's flags, profile and config
    files, the shell with its magics, prefilters, completer and history, the
    storemagic extension, the inline backend), and each template object it
    touched cost the kernel a copy-on-write page. Nothing here opens a socket,
    starts a thread or reads the connection file, the work dir or the kernel's
    environment: the child does those (``_initialize_prebuilt``). False (and no
    singleton left behind) if the configuration names another kernel or shell
    class or anything fails: the kernels then initialize fully, as before.
    """
    from ipykernel.compiler import XCachingCompiler
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.zmqshell import ZMQInteractiveShell

    shell = None
    try:
        app = IPKernelApp.instance()
        # BaseIPythonApplication.initialize's steps, minus the crash handler (sys.excepthook is the kernel's)
        app.parse_command_line([*argv, *forkkernel.CHILD_ARGUMENTS])
        app.init_profile_dir()
        app.init_config_files()
        app.load_config_file()
        app.update_config(app.cli_config)
        kernel_config = app.config.get("IPythonKernel", {})
        if app.subapp is not None or app.kernel_class is not IPythonKernel or {"shell_class", "compiler_class"} & set(kernel_config):
            raise RuntimeError("the configuration names its own kernel or shell class")
        history = app.config.get("HistoryManager", {})
        if history.get("hist_file") != ":memory:" and history.get("enabled") is not False:
            # a history file (a server's stock kernelspec): the shell would open it and start its saving
            # thread here, and every fork would share one session of it and that thread's held locks
            raise RuntimeError("IPython history is kept in a file (the local backend passes --HistoryManager.hist_file=:memory:)")
        # what IPythonKernel.__init__ builds; its own ``instance()`` call then returns this one
        shell = ZMQInteractiveShell.instance(
            parent=app, profile_dir=app.profile_dir, user_module=None, user_ns=app.user_ns, kernel=None, compiler_class=XCachingCompiler
        )
        app.shell = shell
        app.init_extensions()  # the kernel's own call finds them loaded
        if "matplotlib_inline.backend_inline" in sys.modules:
            # the preloaded backend could not hook into a shell that did not exist at its import;
            # its last step, the GUI event loop, is the kernel's: recorded here, done in _adopt_shell
            shell.enable_gui = forkkernel.DEFERRED_GUI.append
            try:
                shell.enable_matplotlib("inline")
            finally:
                del shell.enable_gui
        if threading.active_count() != 1:
            raise RuntimeError(f"building the shell started {threading.active_count() - 1} thread(s) (IPython history kept in a file?)")
        _quiet_debug_records(app.log)
        return True
    except Exception as exc:  # another ipykernel or IPython: its kernels initialize fully
        print(f"fork template: cannot prebuild the kernel ({type(exc).__name__}: {exc}); kernels initialize fully", file=sys.stderr, flush=True)
        if shell is not None:
            atexit.unregister(shell.atexit_operations)
        forkkernel.DEFERRED_GUI.clear()
        ZMQInteractiveShell.clear_instance()
        IPKernelApp.clear_instance()
        return False


def _warm_matplotlib() -> None:
    """Draw one figure to PNG as the inline backend would, so a kernel's first plot is as fast as its second.

    The first ``savefig`` of a process imports Pillow's image plugins, loads
    the font files and fills matplotlib's font, text-layout and tick caches
    (~25 ms of the first plot cell). Done on a figure pyplot never sees: no
    figure, figure number or inline-backend state is left for a kernel to
    inherit. Skipped without the preloaded inline backend; a failure only
    costs the kernels that warm-up.
    """
    if "matplotlib_inline.backend_inline" not in sys.modules:
        return
    try:
        from IPython.core.pylabtools import print_figure
        from matplotlib.figure import Figure

        figure = Figure()
        axes = figure.subplots()
        axes.plot([0, 1, 4, 9], label="warm-up")
        axes.set(title="warm-up", xlabel="x", ylabel="y")
        axes.legend()
        print_figure(figure, "png", bbox_inches="tight")  # what the inline backend's PNG formatter calls
    except Exception as exc:
        print(f"fork template: cannot warm matplotlib up: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _quiet_debug_records(logger: Any) -> None:
    """Let the app's logger drop below-threshold records before building them, not after.

    traitlets leaves the ``IPKernelApp`` logger at DEBUG and filters in its
    handler (WARNING by default), so each of a kernel's ~25 debug messages of a
    start, a cell and an exit is formatted with its caller's frame and
    dropped. The logger's own level set to its handlers' lowest gives the same
    output; a later ``log_level`` change reconfigures the logger as before.
    """
    handlers = getattr(logger, "handlers", None)
    if handlers:
        logger.setLevel(min(handler.level or logging.DEBUG for handler in handlers))


class Spare(NamedTuple):
    """The kernel a template keeps forked and initialized ahead of the next request (see ``forkkernel.become_spare``)."""

    pid: int
    pidfd: int
    channel: socket.socket  # the template's end: the request goes here; closing it ends an unclaimed spare
    connection: dict[str, Any]  # its sockets and key, for the client to adopt


class Template:
    """The accept/fork/reap loop of one template process, and its spare kernel."""

    def __init__(self, listener: socket.socket, folder: str, idle: float, argv: list[str], prebuilt: bool) -> None:
        self.listener = listener
        self.folder = folder  # owner-only: the spare's connection file and unix sockets go here
        self.idle = idle
        self.argv = argv  # the kernels' command line, forkkernel.CONNECTION_FILE for theirs
        self.prebuilt = prebuilt  # whether the kernel app and its shell are built (for self.argv)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        self.children: dict[int, tuple[int, socket.socket | None]] = {}  # pidfd -> (pid, connection; None: the spare)
        # a spare waits on a connection file of its own: only for prebuilt kernels (it waits inside their
        # start-up), and only where its unix socket paths fit
        self.spare_deaths_left = SPARE_DEATHS_ALLOWED if prebuilt and len(self._spare_paths("0" * 16)[1]) + 3 <= MAX_SOCKET_PATH else 0
        self.spare: Spare | None = None

    def serve(self) -> None:
        self._fork_spare()
        while True:
            events = self.selector.select(self.idle)
            if not events and all(conn is None for _, conn in self.children.values()):
                self._retire_spare()
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
            data, fds, _, _ = socket.recv_fds(conn, forkkernel.MAX_REQUEST, 4)
            request = json.loads(data)
            if not _same_command_line(request["argv"], self.argv):  # the prebuilt kernel was configured by it
                raise RuntimeError(f"this template serves kernels started with {self.argv}, not {request['argv']}")
            if self._hand_spare(conn, request, fds):
                self._fork_spare()  # the next one, while the client connects to this one
                return
            pid = _fork()
        except Exception as exc:
            for fd in fds:
                os.close(fd)
            _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
            conn.close()
            return
        if pid == 0:
            forkkernel.become_kernel(self.close_in_child, conn, request, fds, self.prebuilt)  # never returns
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)  # before any reaping: it names this child, never a reused pid
        try:
            socket.send_fds(conn, [json.dumps({"pid": pid}).encode() + b"\n"], [pidfd])
        except OSError:
            pass  # the owner gave up waiting; the kernel is still ours to reap
        self.children[pidfd] = (pid, conn)
        self.selector.register(pidfd, selectors.EVENT_READ, "child")
        self._fork_spare()

    def _hand_spare(self, conn: socket.socket, request: dict, fds: list[int]) -> bool:
        """Give the request to the spare, if it may adopt one; False: fork for it instead.

        The client says whether it can adopt a kernel's sockets and key
        (``spare_ok``: not on a restart, which keeps the old ones) and with
        which signature scheme. The spare gets the request, its stdout and
        stderr and the connection; the client gets its pid and connection.
        """
        spare = self.spare
        if spare is None or not request.get("spare_ok") or request.get("signature_scheme") != spare.connection["signature_scheme"] or len(fds) != 2:
            return False
        try:
            socket.send_fds(spare.channel, [json.dumps(request).encode()], [*fds, conn.fileno()])
        except OSError:
            return False  # it died (reaped in turn) or the request is larger than one message: fork
        self.spare = None
        spare.channel.close()
        for fd in fds:
            os.close(fd)
        try:
            socket.send_fds(conn, [json.dumps({"pid": spare.pid, "connection": spare.connection}).encode() + b"\n"], [spare.pidfd])
        except OSError:
            pass  # the owner gave up waiting; the kernel is ours to reap (it ends with its owner)
        self.children[spare.pidfd] = (spare.pid, conn)
        return True

    def _spare_paths(self, name: str) -> tuple[str, str]:
        return os.path.join(self.folder, f"spare-{name}.json"), os.path.join(self.folder, f"k-{name}")

    def _fork_spare(self) -> None:
        """Fork the next spare unless one waits (or spares are off); a failure only means forks on request."""
        if self.spare is not None or self.spare_deaths_left <= 0:
            return
        try:
            name = uuid.uuid4().hex[:16]
            path, ip = self._spare_paths(name)
            connection = {"transport": "ipc", "ip": ip, **SPARE_PORTS, "key": str(uuid.uuid4()), "signature_scheme": SPARE_SIGNATURE_SCHEME, "kernel_name": ""}
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                json.dump(connection, handle)
            channel, spare_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid = _fork()
        except Exception as exc:
            print(f"fork template: cannot fork a spare kernel ({type(exc).__name__}: {exc}); forking on request", file=sys.stderr, flush=True)
            self.spare_deaths_left = 0
            return
        if pid == 0:
            channel.close()
            argv = [path if arg == forkkernel.CONNECTION_FILE else arg for arg in self.argv]
            forkkernel.become_spare(self.close_in_child, argv, spare_end)  # never returns
        spare_end.close()
        pidfd = os.pidfd_open(pid)
        self.spare = Spare(pid, pidfd, channel, connection)
        self.children[pidfd] = (pid, None)
        self.selector.register(pidfd, selectors.EVENT_READ, "child")

    def _retire_spare(self) -> None:
        """End the unclaimed spare (it removes its files when its channel closes) and reap it."""
        spare, self.spare = self.spare, None
        if spare is None:
            return
        spare.channel.close()
        if not select.select([spare.pidfd], [], [], forkkernel.SHUTDOWN_JOIN_SECONDS)[0]:
            signal.pidfd_send_signal(spare.pidfd, signal.SIGKILL)
        self.selector.unregister(spare.pidfd)
        del self.children[spare.pidfd]
        os.close(spare.pidfd)
        os.waitpid(spare.pid, 0)

    def _reap(self, pidfd: int) -> None:
        pid, conn = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if conn is not None:
            _send(conn, {"exit": code})
            conn.close()
            return
        if self.spare is not None and self.spare.pid == pid:  # the spare ended unclaimed
            self.spare.channel.close()
            self.spare = None
            self.spare_deaths_left -= 1
            print(f"fork template: the spare kernel (pid {pid}) ended unclaimed with {code}", file=sys.stderr, flush=True)

    def close_in_child(self) -> None:
        """Close everything of the template in a new kernel, through the owning objects (not its request's connection).

        Closing only the numbers would let a stale Python object close a
        descriptor number later reused by the kernel's ZMQ sockets. The spare's
        channel above all: a spare sees its template end only when no process
        holds that end open.
        """
        self.selector.close()
        self.listener.close()
        for pidfd, (_, conn) in self.children.items():
            os.close(pidfd)
            if conn is not None:
                conn.close()
        self.children.clear()
        if self.spare is not None:
            self.spare.channel.close()
            self.spare = None


def _fork() -> int:
    """``os.fork()`` of this single-threaded process, its stdio flushed (nothing buffered is written twice)."""
    if threading.active_count() != 1:  # a fork would copy a thread's locks in a held state
        raise RuntimeError(f"the template runs {threading.active_count()} threads")
    sys.stdout.flush()
    sys.stderr.flush()
    return os.fork()


def _same_command_line(argv: list[str], template: list[str]) -> bool:
    """Whether ``argv`` is the template's kernel command line with a connection file filled in."""
    return len(argv) == len(template) and all(a == t or t == forkkernel.CONNECTION_FILE for a, t in zip(argv, template))


def _peer_uid(conn: socket.socket) -> int:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the owner closed the connection: nobody is waiting for this


def main(argv: list[str]) -> None:
    path, preload, idle = argv[0], [n.strip() for n in argv[1].split(",") if n.strip()], float(argv[2])
    kernel_argv = json.loads(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the owner, not the template
    started = time.perf_counter()
    _preload(preload)
    prebuilt = _prebuild(kernel_argv)
    _warm_matplotlib()
    forkkernel.list_modules()
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
    ready = {"ready": os.getpid(), "socket": path, "prebuilt": prebuilt, "seconds": round(time.perf_counter() - started, 3)}
    print(json.dumps(ready), file=sys.stderr, flush=True)
    try:
        Template(listener, os.path.dirname(path), idle, kernel_argv, prebuilt).serve()
    finally:
        try:
            if os.stat(path).st_ino == inode:  # not a successor's socket
                os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
