"""Kernels forked from the preloaded template: the conformance kit, isolation, crashes, fallback."""

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from dsagent.kernel_gateway import forkkernel, forkserver
from dsagent.kernel_gateway.local import LocalBackend
from dsagent.settings import Settings
from dsagent.testing.conformance import BackendConformance, process_gone

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the fork server uses Linux pidfds"),
    # templates are shared by every process of this user, and some tests here kill one on purpose:
    # on one xdist worker, so such a kill never lands in the middle of a sibling test's fork
    pytest.mark.xdist_group("forkserver"),
]


def _settings(tmp_path, **values):
    return Settings(home=str(tmp_path / "ws"), kernel_pool_replenish_delay=600, **values)


def _template_pid(preload: tuple[str, ...] = forkserver.preload_list(Settings().kernel_preload)) -> int:
    """The pid of the template this process's kernels with ``preload`` come from.

    Earlier tests in the same process may have used templates of another import environment
    (a monkeypatched variable) or idle time: only the one these tests' settings pick counts.
    """
    here = forkserver._template_env(os.environ)
    pids = {s.template_pid() for s in forkserver._SERVERS.values()
            if s.preload == preload and s.env == here and s.idle == Settings().kernel_fork_idle} - {None}
    assert len(pids) == 1, pids
    return pids.pop()


async def _warm_backend(settings, **options):
    backend = LocalBackend(settings, **options)
    await backend.warm()  # the template is shared, so only the first test waits for its imports
    return backend


class TestForkServedConformance(BackendConformance):
    """Every session a fresh fork (no pool). The template is per process, so backends share it."""

    @pytest.fixture
    async def backend(self, tmp_path):
        async with await _warm_backend(_settings(tmp_path), pool_size=0) as backend:
            yield backend

    async def test_the_kernel_is_a_fork_of_the_template(self, session):
        assert session._kernel.km.forked and session._kernel.km.from_spare  # the template's spare, made ahead
        kernel = psutil.Process(session.kernel_pid)
        assert kernel.ppid() == _template_pid()
        assert "ipykernel_launcher -f" in " ".join(kernel.cmdline())  # what ps and kernel finders look for
        # its own session and process group: a SIGINT to the group reaches no sibling
        assert os.getsid(session.kernel_pid) == session.kernel_pid
        result = await session.execute("import sys; print('pandas' in sys.modules, 'matplotlib.pyplot' in sys.modules)")
        assert result.outputs[0]["text"] == "True True\n"


@pytest.fixture
async def backend(tmp_path):
    async with await _warm_backend(_settings(tmp_path), pool_size=0) as backend:
        yield backend


async def test_two_children_share_no_state(backend, tmp_path):
    a, b = await backend.start_session(), await backend.start_session()
    try:
        assert a._kernel.km.forked and b._kernel.km.forked
        probe = "import random, uuid, numpy as np; print(random.random(), np.random.rand(), uuid.uuid4())"
        first, second = (await a.execute(probe)).outputs[0]["text"], (await b.execute(probe)).outputs[0]["text"]
        assert all(x != y for x, y in zip(first.split(), second.split())), (first, second)
        # the inline backend closes a cell's figures unless told not to: keep this one open
        await a.execute("%config InlineBackend.close_figures = False\nsecret = 42\nlog = open('held.txt', 'w')\nimport matplotlib.pyplot as plt\nfig = plt.figure()")
        seen = await b.execute(
            "import os, matplotlib.pyplot as plt\n"
            "print('secret' in globals(), plt.get_fignums(),"
            " any(os.path.realpath(f'/proc/self/fd/{fd}').endswith('held.txt') for fd in os.listdir('/proc/self/fd')))"
        )
        assert seen.outputs[0]["text"] == "False [] False\n"
        assert (await a.execute("print(secret, plt.get_fignums())")).outputs[0]["text"] == "42 [1]\n"
        assert a.work_dir != b.work_dir and (await b.execute("import os; print(os.getcwd())")).outputs[0]["text"] == b.work_dir + "\n"
    finally:
        await a.shutdown()
        await b.shutdown()


#: what a kernel's own start wires up; a forked kernel adopts the template's prebuilt shell and must end up the same
WIRING_PROBE = (
    "import os, sys\n"
    "ip = get_ipython()\n"
    "print(ip.kernel is not None and ip.parent is ip.kernel and ip.kernel.shell is ip, [str(d) for d in _dh] == [os.getcwd()],"
    " ip.starting_dir == os.getcwd(), os.environ.get('TERM'), os.environ.get('PAGER'), sorted(ip.extension_manager.loaded),"
    " type(sys.stdout).__name__, ip._orig_sys_module_state['stdout'] is sys.stdout, ip.history_manager.hist_file,"
    " sys.excepthook == ip.kernel.parent.excepthook, any(p.endswith('kernel_gateway') for p in sys.path), os.environ.get('DSAGENT_PROBE'),"
    " globals().get('__session__'), os.environ.get('MPLBACKEND'))"
)


async def test_a_forked_kernel_is_wired_like_a_normally_launched_one(backend, tmp_path):
    """The template's spare (started before the request: its work dir and environment are taken at the claim),
    a kernel forked for a restart, and a cold kernel answer the probe alike."""
    env = {"DSAGENT_PROBE": "cold", "JPY_SESSION_NAME": "probe.ipynb"}
    cold_settings = _settings(tmp_path, kernel_fork=False, kernel_preload="")
    async with LocalBackend(cold_settings, pool_size=0) as cold_backend:
        cold = await cold_backend.start_session(env=env)
        try:
            expected = (await cold.execute(WIRING_PROBE)).outputs[0]["text"]
        finally:
            await cold.shutdown()
    assert expected == (
        "True True True xterm-color cat ['IPython.extensions.storemagic'] OutStream True :memory: False False cold"
        " probe.ipynb module://matplotlib_inline.backend_inline\n"
    ), expected
    a, b = await backend.start_session(env=env), await backend.start_session()
    try:
        km = a._kernel.km
        assert km.forked and km.from_spare and b._kernel.km.forked
        assert (await a.execute(WIRING_PROBE)).outputs[0]["text"] == expected
        # each kernel's message session is its own (it is made from the connection file, after the fork)
        sessions = [(await s.execute("print(get_ipython().kernel.session.session)")).outputs[0]["text"] for s in (a, b)]
        assert sessions[0] != sessions[1]
        # a restart is forked for its request: the client keeps the sockets it adopted from the spare
        sockets = km.get_connection_info()
        await a.restart()
        assert km.forked and not km.from_spare and km.get_connection_info() == sockets
        assert (await a.execute(WIRING_PROBE)).outputs[0]["text"] == expected
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_shutdown_returns_at_once_and_the_kernel_still_exits_gracefully(tmp_path):
    """shutdown() of a forked kernel does not wait for its exit; aclose() does, and the exit runs the kernel's atexit work."""
    # time enough for the graceful exit on a loaded machine (the default 2 s ran out under make test's load in CI)
    async with await _warm_backend(_settings(tmp_path, kernel_shutdown_wait=30.0), pool_size=0) as backend:
        session = await backend.start_session()
        await session.execute(
            "import atexit\nheld = open('unflushed.txt', 'w'); held.write('kept')\n"
            "atexit.register(lambda: open('atexit.txt', 'w').write('ran'))"
        )
        pid, work = session.kernel_pid, session.work_path
        await session.shutdown()
        assert backend._exits  # still exiting, in the background
    assert not backend._exits and await process_gone(pid)
    # IPython's exit handler resets the namespace (closing, so flushing, the open file), then the user's runs
    assert (work / "unflushed.txt").read_text() == "kept" and (work / "atexit.txt").read_text() == "ran"


async def test_a_forked_kernel_exits_while_the_callers_event_loop_is_blocked(backend):
    """shutdown() sends the shutdown request itself; only the waiting is left to the background task.

    Before, the request was sent by that task: a caller that blocked its loop
    right after shutdown() (the pool test, polling with psutil) kept the kernel
    running for as long as it blocked.
    """
    session = await backend.start_session()
    await session.execute("1+1")
    kernel = psutil.Process(session.kernel_pid)
    await session.shutdown()
    kernel.wait(timeout=10)  # blocks this loop: the background task cannot run meanwhile
    assert backend._exits  # its task has not run yet, and the kernel is gone all the same


def test_a_template_forks_only_for_its_own_kernel_command_line(backend):
    """Its kernel app was configured by that command line: a request with another one is refused (and launched normally)."""
    km = backend._kernel_manager()
    server = km.fork_server(backend._kernel_env(None))
    assert server is not None and server.wait_ready(60)
    assert "{connection_file}" in server.kernel_argv
    cmd = km.format_kernel_cmd(extra_arguments=["--IPythonKernel.cache_size=7"])
    with pytest.raises(forkserver.ForkFailed, match="serves kernels started with"):
        server.spawn(cmd, str(backend.workspace.home), backend._kernel_env(None), None, None, timeout=30)


async def test_a_crashing_child_leaves_template_and_siblings_alone(backend):
    a, b = await backend.start_session(), await backend.start_session()
    try:
        template = _template_pid()
        await b.execute("x = 1")
        died = await a.execute("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
        assert died.status == "died" and "SIGSEGV" in died.error.evalue
        assert _template_pid() == template
        assert (await b.execute("x + 1")).outputs[0]["data"]["text/plain"] == "2"
        c = await backend.start_session()
        assert c._kernel.km.forked and (await c.execute("1")).status == "ok"
        await c.shutdown()
        await a.restart()  # a forked kernel restarts as a new fork
        assert a._kernel.km.forked and (await a.execute("'back'")).outputs[0]["data"]["text/plain"] == "'back'"
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_a_dead_template_is_replaced_and_its_kernels_live_on(tmp_path):
    # its own template (no preload: quick to replace), so killing it leaves the shared one alone
    async with await _warm_backend(_settings(tmp_path, kernel_preload=""), pool_size=0) as backend:
        await _kill_and_replace_template(backend)


async def _spare_of(template: int) -> tuple[psutil.Process, list[str]]:
    """The template's waiting spare kernel and the paths of its five unix sockets (once it has bound them all)."""
    for _ in range(200):
        spares = [c for c in psutil.Process(template).children() if c.cmdline()[:1] == [forkkernel.SPARE_TITLE]]
        sockets = sorted({c.laddr for c in spares[0].net_connections("unix") if c.laddr}) if len(spares) == 1 else []
        if len(sockets) == 5:
            return spares[0], sockets
        await asyncio.sleep(0.05)  # forked when the last one was handed out: still starting
    raise AssertionError(f"no spare kernel with its sockets under the template: {spares}")


async def _kill_and_replace_template(backend):
    a = await backend.start_session()
    try:
        old = _template_pid(())
        spare, sockets = await _spare_of(old)
        assert all(os.path.exists(path) for path in sockets), sockets
        os.kill(old, signal.SIGKILL)
        assert await process_gone(old)
        # the spare sees its template's end of their channel close: it removes its sockets and ends
        assert await process_gone(spare.pid) and not any(os.path.exists(path) for path in sockets)
        assert (await a.execute("'still here'")).status == "ok"
        b = await backend.start_session()  # no template: a normal launch, and a new template starts
        assert not b._kernel.km.forked and (await b.execute("1")).status == "ok"
        await b.shutdown()
        await backend.warm()
        b = await backend.start_session()
        assert b._kernel.km.forked and _template_pid(()) != old
        assert (await b.execute("1 + 1")).outputs[0]["data"]["text/plain"] == "2"
        await b.shutdown()
        # the orphaned kernel's end is still seen (no exit code from a dead template)
        pid = a.kernel_pid
        os.kill(pid, signal.SIGKILL)
        died = await a.execute("1")
        assert died.status == "died"
    finally:
        await a.shutdown()


async def test_an_idle_template_ends_with_its_spare_and_leaves_no_files(tmp_path):
    # its own template (a preload list no other test has; the idle time is not part of a template's identity)
    async with await _warm_backend(_settings(tmp_path, kernel_preload="colorsys", kernel_fork_idle=0.5), pool_size=0) as backend:
        session = await backend.start_session()
        assert session._kernel.km.from_spare
        template = psutil.Process(session.kernel_pid).ppid()
        spare, sockets = await _spare_of(template)  # the next one, forked once this one was handed out
        await session.shutdown()
    assert await process_gone(template, within=30) and await process_gone(spare.pid)
    assert sockets and not any(os.path.exists(path) for path in sockets)
    assert not os.path.exists(os.path.join(forkserver.runtime_dir(), os.path.basename(sockets[0]).rsplit("-", 1)[0].replace("k-", "spare-", 1) + ".json"))


async def test_a_failed_fork_falls_back_to_a_normal_launch_logged_once(tmp_path, monkeypatch, caplog):
    # a template that cannot start (its script is missing: a broken install)
    monkeypatch.setattr(forkserver, "TEMPLATE_SCRIPT", tmp_path / "missing-template.py")
    monkeypatch.setattr(forkserver, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="dsagent.kernel_gateway.forkserver")
    async with await _warm_backend(_settings(tmp_path, kernel_start_timeout=20), pool_size=0) as backend:
        session = await backend.start_session()
        assert not session._kernel.km.forked
        assert (await session.execute("6 * 7")).outputs[0]["data"]["text/plain"] == "42"
        await session.shutdown()
    warnings = [r.getMessage() for r in caplog.records if "fork server unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "missing-template.py" not in warnings[0] and "while starting" in warnings[0], warnings


async def test_a_forked_kernels_first_plot_finds_matplotlib_warm_and_no_figure_inherited(backend):
    """The template drew one PNG (fonts, Pillow's plugins): a kernel's first plot imports nothing, and starts at figure 1."""
    session = await backend.start_session()
    try:
        probe = "import sys, matplotlib.pyplot as plt\nbefore = set(sys.modules)\nprint(plt.get_fignums())"
        assert (await session.execute(probe)).outputs[0]["text"] == "[]\n"
        plot = await session.execute("fig, ax = plt.subplots()\nax.plot([0, 1, 4, 9])\nprint(fig.number)\nplt.show()")
        assert plot.outputs[0]["text"] == "1\n" and "image/png" in plot.outputs[1]["data"]
        assert (await session.execute("print(sorted(set(sys.modules) - before))")).outputs[0]["text"] == "[]\n"
    finally:
        await session.shutdown()


async def test_a_forked_kernels_log_keeps_warnings_and_drops_debug_records_unbuilt(backend):
    """The template sets the app logger's level to its handler's, so debug records are not even built; warnings still land in the kernel log."""
    session = await backend.start_session()
    try:
        probe = "log = get_ipython().kernel.log\nlog.warning('fork-probe-warning')\nlog.debug('fork-probe-debug')\nprint(log.isEnabledFor(10))"
        assert (await session.execute(probe)).outputs[0]["text"] == "False\n"
    finally:
        await session.shutdown()
    await asyncio.gather(*backend._exits)
    log = (backend.workspace.home / "logs" / f"kernel-{session.work_path.name}.log").read_text()
    assert "fork-probe-warning" in log and "fork-probe-debug" not in log


async def test_the_start_up_module_lists_come_from_the_template_complete(backend):
    """The debugger's module files and %reset's module names are listed at a kernel's start; a fork takes the template's lists: the same."""
    session = await backend.start_session()
    try:
        probe = (
            "import sys; listed = get_ipython().kernel._kernel_modules\n"
            "files = {m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)}\n"
            "print(all(type(f) is str for f in listed), sorted(files - set(listed)), 'ipykernel' in str(listed),"
            " get_ipython()._sys_modules_keys == set(sys.modules), sys is __import__('IPython.core.shellapp').core.shellapp.sys)"
        )
        assert (await session.execute(probe)).outputs[0]["text"] == "True [] True True True\n"
    finally:
        await session.shutdown()


async def test_pooled_kernels_import_the_preload_list_in_their_warm_up(tmp_path):
    # a cold (not forked) kernel, so the imports can only come from the warm-up cell;
    # a module that is not installed is skipped, not an error
    settings = _settings(tmp_path, kernel_fork=False, kernel_preload="csv, no_such_module_dsagent")
    async with LocalBackend(settings, pool_size=1) as backend:
        session = await backend.start_session()
        assert not isinstance(session._kernel.km, forkserver.ForkingKernelManager)
        result = await session.execute("import sys; print('csv' in sys.modules, 'csv' in dir(), 'm' in dir())")
        assert result.outputs[0]["text"] == "True False False\n"
        assert result.execution_count == 1
        await session.shutdown()


def test_kernels_end_with_the_process_that_asked_for_them(tmp_path):
    """An owner killed with -9 runs no cleanup: its forked kernels notice and exit on their own."""
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from dsagent.kernel_gateway.local import LocalBackend
        from dsagent.settings import Settings
        async def main():
            backend = LocalBackend(Settings(home={str(tmp_path / 'ws')!r}, kernel_preload=""), pool_size=0)
            await backend.warm()
            session = await backend.start_session()
            assert session._kernel.km.forked
            print(session.kernel_pid, flush=True)
            os.kill(os.getpid(), 9)
        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    pid = int(done.stdout.split()[0])
    assert asyncio.run(process_gone(pid, within=10))


def test_files_that_ended_processes_left_a_day_ago_are_removed_and_the_rest_kept(tmp_path):
    day_ago = time.time() - forkserver.STALE_AFTER_SECONDS - 60

    def made(name, old=True, text="", listen=False):
        path = tmp_path / name
        if name.startswith("k-"):  # a kernel's unix socket; a killed kernel's refuses connections
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            if listen:
                sock.listen(1)
                held.append(sock)
            else:
                sock.close()
        else:
            path.write_text(text)
        if old:
            os.utime(path, (day_ago, day_ago))
        return path

    held = []
    try:
        dead = [made(n, text="999999999") for n in ("aaaa.pid", "aaaa.pid.lock", "aaaa.log", "aaaa.sock")]
        dead += [made("k-0123456789abcdef-1"), made("spare-0123456789abcdef.json"), made("streams-0123456789abcdef.bin")]
        recent = [made("bbbb.pid", old=False, text="999999999"), made("bbbb.log", old=False), made("k-fedcba9876543210-1", old=False)]
        recent.append(made("streams-fedcba9876543210.bin", old=False))  # a kernel's stream copy in use
        living = [made("k-1111111111111111-1", listen=True), made("notes.txt")]
        starting = [made("cccc.log"), made("cccc.pid.lock")]  # the template being started now
        assert forkserver.remove_stale_files(str(tmp_path), keep=str(tmp_path / "cccc")) == len(dead)
        assert not any(path.exists() for path in dead)
        assert all(path.exists() for path in recent + living + starting)
    finally:
        for sock in held:
            sock.close()


def test_a_runtime_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(forkserver.tempfile, "tempdir", str(tmp_path))
    folder = tmp_path / f"dsagent-fork-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)  # someone else could plant a socket here
    with pytest.raises(forkserver.ForkFailed, match="only this user"):
        forkserver.runtime_dir()
    folder.chmod(0o700)
    assert forkserver.runtime_dir() == str(folder)


async def test_a_template_that_retired_when_idle_is_started_again_not_taken_for_a_failure(tmp_path, monkeypatch, caplog):
    """A template this process started but never used (a pre-start, or another client of it) retires after
    kernel_fork_idle with exit code 0: the next kernel starts a new one instead of falling back to a normal launch
    (make test saw "the fork template exited with 0 while starting" and an unforked kernel)."""
    monkeypatch.setattr(forkserver, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="dsagent.kernel_gateway.forkserver")
    # its own template (a preload list no other test has; the idle time is not part of a template's identity)
    async with LocalBackend(_settings(tmp_path, kernel_preload="colorsys, html", kernel_fork_idle=0.5), pool_size=0) as backend:
        server = backend._kernel_manager().fork_server(backend._kernel_env(None))
        server.start()  # started, never connected to by this process
        assert await asyncio.to_thread(server._started.wait, 60) == 0  # ready, then retired when idle
        await backend.warm()  # waits for a template, as `dsagent serve` does at its start
        session = await backend.start_session()
        assert session._kernel.km.forked
        await session.shutdown()
    assert not [r.getMessage() for r in caplog.records if "fork server unavailable" in r.getMessage()]
