"""The forked side of the kernel fork server: what a child of ``forktemplate.py`` does to become an ipykernel.

Loaded by the template from its own folder under the name
``_dsagent_forkkernel`` (like the template, it never imports dsagent: every
kernel inherits what the template imported). Two ways in:

- ``become_kernel``: a fork made for one request. It takes the request's
  stdio, work dir, environment and owner, then initializes the kernel on the
  app and shell the template prebuilt (``initialize_prebuilt``) and serves.
- ``become_spare``: a fork made ahead of any request (the template keeps one).
  It initializes the kernel on a connection file of the template's making
  (its own unix sockets and key), then waits on a channel from the template
  at the last step of ``initialize()``, before the startup code. A request
  handed to it (``_claim``) brings stdio, work dir, environment, owner and the
  connection file path; the client adopts the spare's sockets and key
  (``forkserver.adopted_connection``). Everything a kernel reads from its
  work dir or environment during its start is redone at the claim.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pathlib
import select
import signal
import socket
import sys
import threading
import traceback
from typing import Any, Callable, NoReturn

#: the folder of the template's script: Python put it first on the template's sys.path (a kernel's must not have it)
SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
#: where a kernel's command line has its connection file (the template's argv for its kernels)
CONNECTION_FILE = "{connection_file}"
#: what every forked kernel's command line gets on top of the request's: the parent poller would
#: watch the template (its parent); _watch_owner does its job
CHILD_ARGUMENTS = ("--IPKernelApp.parent_handle=0",)
#: how long a kernel's exit waits for each of its threads (an interpreter would wait forever)
SHUTDOWN_JOIN_SECONDS = 5.0
#: the largest request (argv + env) a kernel launch sends
MAX_REQUEST = 1 << 20
#: what a waiting spare shows in ps: not a kernel yet (kernel finders look for ipykernel_launcher), not the template
SPARE_TITLE = "dsagent fork server: spare kernel"
#: the GUI event loop enable_matplotlib asked for in the template, for each kernel to enable
DEFERRED_GUI: list[Any] = []


def become_kernel(close_template: Callable[[], None], conn: socket.socket, request: dict, fds: list[int], prebuilt: bool) -> NoReturn:
    """In a child forked for ``request``: become a fresh ipykernel with its argv, cwd, env and stdio."""

    def run() -> int:
        _detach(close_template)
        for target, fd in zip((1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        _take_request(request)
        return _run_kernel(request["argv"], prebuilt, conn, None)

    _exit_after(run)


def become_spare(close_template: Callable[[], None], argv: list[str], channel: socket.socket) -> NoReturn:
    """In a child forked ahead of any request: initialize on the template's connection file, then wait for a request.

    Until then its stdout is /dev/null (ipykernel's start-up notes are the
    request's kernel's business) and its stderr the template's log. It ends,
    quietly and at once, when the template closes the channel (idle, or gone).
    """

    def run() -> int:
        _detach(close_template)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
        if "setproctitle" in sys.modules:
            sys.modules["setproctitle"].setproctitle(SPARE_TITLE)
        return _run_kernel(argv, True, None, channel)

    _exit_after(run)


def _exit_after(run: Callable[[], int]) -> NoReturn:
    """Run a forked child's life, then end it as interpreter exit would (``_finalize``): its stack is the template's."""
    code = 1
    try:
        code = run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            _finalize()
        finally:
            os._exit(code)


def _detach(close_template: Callable[[], None]) -> None:
    """Its own session, none of the template's descriptors, stdin from /dev/null, default signal handling."""
    os.setsid()  # its own process group: jupyter_client interrupts with killpg
    close_template()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _take_request(request: dict) -> None:
    """Become the request's process: its title, work dir, environment, random streams and owner."""
    if "setproctitle" in sys.modules:  # ps, psutil and kernel finders then see a kernel, not a template
        # (before the environment is replaced: setproctitle needs the original environ block)
        sys.modules["setproctitle"].setproctitle(" ".join([sys.executable, "-m", "ipykernel_launcher", *request["argv"]]))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _reseed()
    _watch_owner(int(request["owner"]))


def _watch_owner(owner: int) -> None:
    """End this kernel when the process that asked for it ends (as ipykernel's parent poller would)."""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(1)

    def wait() -> None:
        select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=wait, name="dsagent-owner-watch", daemon=True).start()


def _reseed() -> None:
    """Fresh random streams: a forked child would otherwise repeat its siblings' numbers."""
    import random

    random.seed()  # CPython also does this at fork; a spare is claimed long after it
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # the legacy global RandomState; default_rng() seeds from the OS anyway


def _finalize() -> None:
    """What interpreter exit does, in its order, before ``os._exit`` (this stack is the template's).

    Non-daemon threads first: ipykernel's control thread may still be flushing
    the reply to ``shutdown_request`` through the iopub thread, which an atexit
    handler stops (in that order a flush waits 10 s for nothing).
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=SHUTDOWN_JOIN_SECONDS)
    atexit._run_exitfuncs()  # ipykernel's and IPython's, and the user's own
    sys.stdout.flush()
    sys.stderr.flush()


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the owner closed the connection: nobody is waiting for this


def _run_kernel(argv: list[str], prebuilt: bool, conn: socket.socket | None, spare: socket.socket | None) -> int:
    """What ``python -m ipykernel_launcher ARGS`` does, on the app and shell the template built if it did.

    Once its sockets are bound (after ``init_sockets`` and ``init_heartbeat``)
    it tells the client, on the request's connection (``{"started": pid}``),
    and closes its copy of that connection (the template keeps its own for the
    exit code); the rest of ``initialize()`` goes on meanwhile. A spare
    (``spare``: its channel from the template) says so when it is claimed.
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
        if conn is not None and conn.fileno() >= 0:
            _send(conn, {"started": os.getpid()})
            conn.close()

    app.init_heartbeat = init_heartbeat
    try:
        if prebuilt:
            initialize_prebuilt(app, argv[argv.index("-f") + 1], spare)
        else:
            app.initialize([*argv, *CHILD_ARGUMENTS])
            if "matplotlib_inline.backend_inline" in sys.modules and app.shell is not None:
                app.shell.enable_matplotlib("inline")  # as the template's prebuild does
    finally:
        del app.init_heartbeat
    if conn is not None and conn.fileno() >= 0:  # an ipykernel whose initialize() has no init_heartbeat step
        _send(conn, {"started": os.getpid()})
        conn.close()
    app.start()
    _let_control_finish(app)
    return 0


def initialize_prebuilt(app: Any, connection_file: str, spare: socket.socket | None = None) -> None:
    """``app.initialize()`` minus what the template's prebuild did: only what is this kernel's own runs here.

    That is: the crash handler, the connection file, ports, sockets, heartbeat,
    iopub/control/shell-channel threads, stdio and displayhook, signal
    handlers, the kernel object (adopting the prebuilt shell), ``sys.path``,
    extensions (already loaded: a no-op) and startup code. The skipped steps
    are replaced for this one call by instance attributes. A spare waits for
    its request before the startup code, which reads the work dir and the
    environment (``PYTHONSTARTUP``, startup files, ``exec_lines``).
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

        if spare is not None:
            _claim(app, spare)
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


def _claim(app: Any, channel: socket.socket) -> None:
    """Wait for the request the template hands this spare, then become its kernel (see ``become_spare``).

    The request comes with its stdout, stderr and connection (SCM_RIGHTS).
    Its sockets were bound long ago, so the client is told at once; what the
    start read from the template's work dir and environment is redone for the
    request's. No request (the channel closed: the template retired this spare
    or died): the spare removes its files and ends.
    """
    try:
        data, fds, _, _ = socket.recv_fds(channel, MAX_REQUEST, 3)
    except OSError:
        data, fds = b"", []
    if not data or len(fds) != 3:
        with contextlib.suppress(OSError):
            os.unlink(app.abs_connection_file)
        app.cleanup_ipc_files()  # its sockets' paths: nobody will ever connect to them
        os._exit(0)
    channel.close()
    request = json.loads(data)
    stdout, stderr, conn_fd = fds
    with socket.socket(fileno=conn_fd) as conn:
        _send(conn, {"started": os.getpid()})
    # ipykernel captures fds 1 and 2 (a pipe to the client) and echoes to copies it made of them:
    # those copies, or the fds themselves if not captured, are what a kernel forked for the request writes to
    for stream, fd, new in ((sys.stdout, 1, stdout), (sys.stderr, 2, stderr)):
        copy = getattr(stream, "_original_stdstream_copy", None)
        os.dup2(new, fd if copy is None else copy)
        os.close(new)
    _take_request(request)
    spare_file = app.abs_connection_file
    sys.argv[1:] = request["argv"]
    app.connection_file = request["argv"][request["argv"].index("-f") + 1]  # the client rewrote it with this kernel's sockets
    with contextlib.suppress(OSError):
        os.unlink(spare_file)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as ipykernel's init_gui_pylab
    _settle_shell(app.shell)
    session_name = os.environ.get("JPY_SESSION_NAME")  # as IPythonKernel.__init__
    if session_name:
        app.shell.user_ns["__session__"] = session_name


class _ModuleFile:
    """A module as ``IPythonKernel.__init__`` looks at it: only its ``__file__``."""

    __slots__ = ("__file__",)

    def __init__(self, file: str) -> None:
        self.__file__ = file


class _TemplateModules:
    """``sys.modules`` as two start-up steps read it, answered from the template's lists (see ``list_modules``)."""

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


#: every module's file and name as the template has them (see list_modules)
_MODULE_FILES: list[_ModuleFile] = []
_MODULE_NAMES: list[str] = []


def list_modules() -> None:
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
    for gui in DEFERRED_GUI:
        shell.enable_gui(gui)
    _settle_shell(shell)
    # what a shell built after init_io saves, and restores at exit
    shell._orig_sys_module_state.update(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr, excepthook=sys.excepthook)
    # its exit handler (reset the namespace, end the history) runs where a shell built here would
    # have put it: before the handlers registered earlier in this kernel's start, which stop iopub
    atexit.unregister(shell.atexit_operations)
    atexit.register(shell.atexit_operations)


def _settle_shell(shell: Any) -> None:
    """What a shell takes from the work dir and the environment when it is built."""
    shell.init_environment()  # TERM, PAGER, ...: the request's environment replaced the template's
    shell.starting_dir = os.getcwd()
    shell.history_manager.dir_hist[:] = [pathlib.Path.cwd()]  # _dh starts at the work dir


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
