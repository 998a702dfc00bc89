"""The template process of the kernel fork server: imports once, then forks one ipykernel per request.

Run as a script (``python forktemplate.py SOCKET PRELOAD IDLE_SECONDS KERNEL_ARGV``),
never imported by dsagent: whatever it imports is inherited by every kernel
forked from it, so it imports only ipykernel, IPython and the preload list,
never dsagent itself. Clients (``forkserver.ForkServer`` in any dsagent
process of the same user) talk to it over a unix socket in an owner-only
folder; connections from another uid are refused (SO_PEERCRED):

- request: one JSON message ``{"argv", "cwd", "env", "owner"}`` with the
  kernel's stdout and stderr file descriptors attached (SCM_RIGHTS);
- reply: ``{"pid"}`` with a pidfd of the new kernel attached, or ``{"error"}``;
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

The socket appears at SOCKET only once the imports are done (bound under a
temporary name, then renamed), so a client that can connect gets a fork at
once; one that cannot launches its kernel the normal way meanwhile.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import logging
import os
import pathlib
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any

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
#: where a kernel's command line has its connection file, in KERNEL_ARGV
CONNECTION_FILE = "{connection_file}"
#: what every forked kernel's command line gets on top of the request's: the parent poller would
#: watch the template (its parent); _watch_owner does its job
CHILD_ARGUMENTS = ("--IPKernelApp.parent_handle=0",)
#: the GUI event loop enable_matplotlib asked for in the template, for each kernel to enable
_DEFERRED_GUI: list[Any] = []
#: this script's folder, which Python put first on sys.path (a kernel's path must not have it)
SCRIPT_DIR = sys.path[0]
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
        app.parse_command_line([*argv, *CHILD_ARGUMENTS])
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
            shell.enable_gui = _DEFERRED_GUI.append
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
        _DEFERRED_GUI.clear()
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


class Template:
    """The accept/fork/reap loop of one template process."""

    def __init__(self, listener: socket.socket, idle: float, argv: list[str], prebuilt: bool) -> None:
        self.listener = listener
        self.idle = idle
        self.argv = argv  # the kernels' command line, CONNECTION_FILE for theirs
        self.prebuilt = prebuilt  # whether the kernel app and its shell are built (for self.argv)
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
            if not _same_command_line(request["argv"], self.argv):  # the prebuilt kernel was configured by it
                raise RuntimeError(f"this template serves kernels started with {self.argv}, not {request['argv']}")
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
            socket.send_fds(conn, [json.dumps({"pid": pid}).encode() + b"\n"], [pidfd])
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

    def close_in_child(self) -> None:
        """Close everything of the template in a new kernel, through the owning objects (not its request's connection).

        Closing only the numbers would let a stale Python object close a
        descriptor number later reused by the kernel's ZMQ sockets.
        """
        self.selector.close()
        self.listener.close()
        for pidfd, (_, conn) in self.children.items():
            os.close(pidfd)
            conn.close()
        self.children.clear()


def _same_command_line(argv: list[str], template: list[str]) -> bool:
    """Whether ``argv`` is the template's kernel command line with a connection file filled in."""
    return len(argv) == len(template) and all(a == t or t == CONNECTION_FILE for a, t in zip(argv, template))


def _peer_uid(conn: socket.socket) -> int:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
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
        template.close_in_child()
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
        code = _run_kernel(request["argv"], template.prebuilt, conn)
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


def _run_kernel(argv: list[str], prebuilt: bool, conn: socket.socket) -> int:
    """What ``python -m ipykernel_launcher ARGS`` does, on the app and shell the template built if it did.

    Once its sockets are bound (after ``init_sockets`` and ``init_heartbeat``)
    it tells the client, on the request's connection (``{"started": pid}``),
    and closes its copy of that connection (the template keeps its own for the
    exit code); the rest of ``initialize()`` goes on meanwhile.
    """
    import ipykernel_launcher
    from ipykernel.kernelapp import IPKernelApp

    if SCRIPT_DIR in sys.path:  # IPython's init_path adds the work dir as a kernel has it
        sys.path.remove(SCRIPT_DIR)
    sys.argv = [ipykernel_launcher.__file__, *argv]
    app = IPKernelApp.instance()

    def init_heartbeat() -> None:
        # the shell, iopub, control and stdin ports are bound (init_sockets came first): the client
        # connects while the rest initializes, so its iopub subscription is in place by the first reply
        type(app).init_heartbeat(app)
        if conn.fileno() >= 0:
            _send(conn, {"started": os.getpid()})
            conn.close()

    app.init_heartbeat = init_heartbeat
    try:
        if prebuilt:
            _initialize_prebuilt(app, argv[argv.index("-f") + 1])
        else:
            app.initialize([*argv, *CHILD_ARGUMENTS])
            if "matplotlib_inline.backend_inline" in sys.modules and app.shell is not None:
                app.shell.enable_matplotlib("inline")  # as _prebuild does
    finally:
        del app.init_heartbeat
    if conn.fileno() >= 0:  # an ipykernel whose initialize() has no init_heartbeat step
        _send(conn, {"started": os.getpid()})
        conn.close()
    app.start()
    _let_control_finish(app)
    return 0


def _initialize_prebuilt(app: Any, connection_file: str) -> None:
    """``app.initialize()`` minus what ``_prebuild`` did: only what is this kernel's own runs here.

    That is: the crash handler, the connection file, ports, sockets, heartbeat,
    iopub/control/shell-channel threads, stdio and displayhook, signal
    handlers, the kernel object (adopting the prebuilt shell), ``sys.path``,
    extensions (already loaded: a no-op) and startup code. The skipped steps
    are replaced for this one call by instance attributes.
    """

    def parse_command_line(argv: object = None) -> None:
        # the template parsed this very command line but for this; initialize() re-applies
        # the config after the (skipped) config files, so it goes into the config too
        app.config.IPKernelApp.connection_file = connection_file
        app.connection_file = connection_file

    def init_shell() -> None:
        type(app).init_shell(app)
        _adopt_shell(app.shell, app.kernel)

    def init_kernel() -> None:
        import ipykernel.ipkernel

        with _modules_listed_by_template(ipykernel.ipkernel):
            type(app).init_kernel(app)

    def init_code() -> None:
        import IPython.core.shellapp

        with _modules_listed_by_template(IPython.core.shellapp):
            type(app).init_code(app)

    def skip() -> None:
        pass

    replaced = {
        "parse_command_line": parse_command_line, "init_profile_dir": skip, "init_config_files": skip, "load_config_file": skip,
        "init_kernel": init_kernel, "init_shell": init_shell, "init_code": init_code,
    }  # fmt: skip
    for name, method in replaced.items():
        setattr(app, name, method)
    try:
        app.initialize([])
    finally:
        for name in replaced:
            delattr(app, name)


class _ModuleFile:
    """A module as ``IPythonKernel.__init__`` looks at it: only its ``__file__``."""

    __slots__ = ("__file__",)

    def __init__(self, file: str) -> None:
        self.__file__ = file


class _TemplateModules:
    """``sys.modules`` as two start-up steps read it, answered from the template's lists (see ``_list_modules``)."""

    def copy(self) -> "_TemplateModules":  # IPythonKernel.__init__: sys.modules.copy().values()
        return self

    def values(self) -> list[_ModuleFile]:
        return _MODULE_FILES

    def keys(self) -> list[str]:  # InteractiveShellApp.init_code: set(sys.modules.keys())
        return _MODULE_NAMES


class _SysWithTemplateModules:
    """``sys`` as a module's start-up code sees it while it runs: ``modules`` is the template's lists, the rest is ``sys``."""

    modules = _TemplateModules()

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)


#: every module's file and name as the template has them (see _list_modules)
_MODULE_FILES: list[_ModuleFile] = []
_MODULE_NAMES: list[str] = []


def _list_modules() -> None:
    """List the modules once, in the template, for the two start-up steps of a kernel that list them.

    ``IPythonKernel.__init__`` lists every module's ``__file__`` (the
    debugger's just-my-code rules) and IPython's ``init_code`` every module's
    name (what ``%reset`` keeps). In a fork, each touched the ~1,200 module
    objects and strings of the template, so copied a page of it per module
    (~1,200 page faults, ~7 ms of CPU of every start). The lists hold copies
    made one after another, so reading them touches a few pages.
    """
    modules = sys.modules.copy()
    _MODULE_FILES[:] = [_ModuleFile(m.__file__.encode().decode()) for m in modules.values() if isinstance(getattr(m, "__file__", None), str) and m.__file__]
    _MODULE_NAMES[:] = [name.encode().decode() for name in modules]


@contextlib.contextmanager
def _modules_listed_by_template(module: Any) -> Any:
    """While ``module``'s start-up code runs, its ``sys.modules`` is the template's lists (unless the kernel has imported more since)."""
    if len(_MODULE_NAMES) != len(sys.modules) or getattr(module, "sys", None) is not sys:
        yield
        return
    module.sys = _SysWithTemplateModules()
    try:
        yield
    finally:
        module.sys = sys


def _adopt_shell(shell: Any, kernel: Any) -> None:
    """Make the template's shell this kernel's, as if ``IPythonKernel.__init__`` had built it here."""
    if shell is None or kernel is None or kernel.shell is not shell:
        raise RuntimeError("the kernel did not take the prebuilt shell")
    shell.parent = kernel  # what the kernel passes to a shell it builds (instance() ignored them)
    shell.kernel = kernel
    for gui in _DEFERRED_GUI:
        shell.enable_gui(gui)
    shell.init_environment()  # TERM, PAGER, ...: the request's environment replaced the template's
    shell.starting_dir = os.getcwd()
    shell.history_manager.dir_hist[:] = [pathlib.Path.cwd()]  # _dh starts at the work dir
    # what a shell built after init_io saves, and restores at exit
    shell._orig_sys_module_state.update(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr, excepthook=sys.excepthook)
    # its exit handler (reset the namespace, end the history) runs where a shell built here would
    # have put it: before the handlers registered earlier in this kernel's start, which stop iopub
    atexit.unregister(shell.atexit_operations)
    atexit.register(shell.atexit_operations)


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
    kernel_argv = json.loads(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the owner, not the template
    started = time.perf_counter()
    _preload(preload)
    prebuilt = _prebuild(kernel_argv)
    _warm_matplotlib()
    _list_modules()
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
        Template(listener, idle, kernel_argv, prebuilt).serve()
    finally:
        try:
            if os.stat(path).st_ino == inode:  # not a successor's socket
                os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
