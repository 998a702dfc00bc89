"""The ``jupyter`` backend against a real Kernel Gateway and a real Jupyter Server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from remote_servers import STOCK_KERNEL, RunningServer, free_port, jupyter_server, kernel_gateway, no_kernel_leaks  # noqa: F401 (fixtures)

from dsagent.errors import BackendUnavailable, FileAccessError, KernelDied, KernelServerError, KernelStartFailed
from dsagent.kernel_gateway.remote import JupyterBackend, JupyterSession
from dsagent.kernel_gateway.remote_channels import V1_PROTOCOL
from dsagent.kernel_gateway.remote_files import ContentsFiles, KernelFiles
from dsagent.kernel_gateway.remote_http import ServerAddress


# the `server` fixture reaches the shared servers through getfixturevalue, which tests/conftest.py cannot see
pytestmark = pytest.mark.xdist_group("jupyter-servers")


@pytest.fixture(params=["kernelgateway", "server"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with no_kernel_leaks(request.getfixturevalue("kernel_gateway" if request.param == "kernelgateway" else "jupyter_server")) as server:
        yield server


@pytest.fixture
async def backend(server: RunningServer):
    async with JupyterBackend(url=server.url, token=server.token) as backend:
        yield backend


@pytest.fixture
async def session(backend: JupyterBackend):
    session = await backend.start_session()
    yield session
    await session.shutdown()


def rest(server: RunningServer, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{server.url}/api/{path}", headers={"Authorization": f"token {server.token}"}, timeout=10)


# -- files -------------------------------------------------------------------


async def test_files_use_the_contents_api_only_where_the_server_has_one(server: RunningServer, session: JupyterSession):
    expected = ContentsFiles if server.kind == "server" else KernelFiles
    assert isinstance(session._files, expected)


async def test_upload_download_list_round_trip(server: RunningServer, session: JupyterSession):
    payload = bytes(range(256)) * 100
    await session.upload("data/raw.bin", payload)
    await session.upload("notes.txt", b"hello\n")
    assert await session.download("data/raw.bin") == payload
    names = [(f.path, f.size, f.is_dir) for f in await session.list_files(recursive=True)]
    assert names == [("data", 0 if server.kind == "server" else names[0][1], True), ("data/raw.bin", 25600, False), ("notes.txt", 6, False)]
    assert [f.path for f in await session.list_files()] == ["data", "notes.txt"]
    assert [f.path for f in await session.list_files("data")] == ["data/raw.bin"]
    # the kernel sees what was uploaded, in its cwd
    result = await session.execute("open('data/raw.bin', 'rb').read() == bytes(range(256)) * 100")
    assert result.result == "True"
    assert result.execution_count == 1, "file work must not advance the execution count"


async def test_kernel_side_file_work_leaves_no_trace_in_the_users_namespace(server: RunningServer, session: JupyterSession):
    before = await session.execute("sorted(k for k in globals() if not k.startswith('_'))")
    await session.upload("x.txt", b"x")
    await session.download("x.txt")
    await session.list_files()
    after = await session.execute("sorted(k for k in globals() if not k.startswith('_'))")
    assert after.result == before.result
    assert (before.execution_count, after.execution_count) == (1, 2)


async def test_dot_files_round_trip_too(session: JupyterSession):
    # Jupyter Server's contents API refuses dot-files; they go through the kernel there
    await session.upload(".env", b"A=1\n")
    await session.upload("cfg/.hidden", b"h")
    assert (await session.download(".env"), await session.download("cfg/.hidden")) == (b"A=1\n", b"h")


async def test_files_written_by_the_kernel_can_be_downloaded(session: JupyterSession):
    await session.execute("import os\nos.makedirs('out', exist_ok=True)\nopen('out/r.csv', 'w').write('a,b\\n1,2\\n')")
    assert await session.download("out/r.csv") == b"a,b\n1,2\n"


async def test_file_errors_are_clear(session: JupyterSession):
    with pytest.raises(FileAccessError, match="no file|cannot download"):
        await session.download("missing.txt")
    with pytest.raises(FileAccessError, match="outside the session's work dir"):
        await session.upload("../escape.txt", b"x")
    with pytest.raises(FileAccessError, match="outside the session's work dir"):
        await session.download("/etc/passwd")
    with pytest.raises(FileAccessError, match="not a folder"):
        await session.list_files("missing")


# -- work dir and environment --------------------------------------------------


async def test_work_dir_and_env_are_applied_and_survive_restart(server: RunningServer, backend: JupyterBackend):
    async with await backend.start_session(work_dir="projects/p1", env={"DSAGENT_TEST_VAR": "42"}) as session:
        assert Path(session.work_dir) == (server.root / "projects" / "p1").resolve()
        # printed on one line whatever the path's length (IPython wraps a long tuple's repr)
        check = "import os; print(repr((os.getcwd(), os.environ.get('DSAGENT_TEST_VAR'))))"
        expected = repr((session.work_dir, "42")) + "\n"
        assert (await session.execute(check)).outputs[0]["text"] == expected
        await session.upload("in.txt", b"1")
        assert (server.root / "projects" / "p1" / "in.txt").read_bytes() == b"1"
        await session.execute("import os; os.chdir('/'); os.environ.pop('DSAGENT_TEST_VAR')")
        await session.restart()
        assert (await session.execute(check)).outputs[0]["text"] == expected


async def test_sessions_without_a_work_dir_get_their_own_folder(server: RunningServer, backend: JupyterBackend):
    async with await backend.start_session() as one, await backend.start_session() as two:
        assert one.work_dir != two.work_dir
        for session in (one, two):
            assert Path(session.work_dir).parent == (server.root / "dsagent-sessions").resolve()


async def test_absolute_work_dir_uses_kernel_side_files(tmp_path: Path, backend: JupyterBackend):
    folder = tmp_path / "abs-work"
    async with await backend.start_session(work_dir=str(folder)) as session:
        assert isinstance(session._files, KernelFiles)
        await session.upload("a.txt", b"abc")
        assert (folder / "a.txt").read_bytes() == b"abc"


# -- the kernel going away, the socket dropping --------------------------------


async def test_dropped_websocket_reconnects(session: JupyterSession):
    assert (await session.execute("x = 41")).ok
    session._channel.abort()
    await asyncio.sleep(0.1)
    result = await session.execute("x + 1")
    assert result.status == "ok" and result.result == "42"


async def test_socket_dropped_mid_cell_loses_no_output(session: JupyterSession):
    task = asyncio.ensure_future(session.execute("import time\nprint('before', flush=True)\ntime.sleep(1.5)\nprint('after')", timeout=60))
    await asyncio.sleep(0.7)
    session._channel.abort()
    result = await task
    assert result.status == "ok", result.error
    assert result.stream_text() == "before\nafter\n"


async def test_socket_dropped_before_the_request_arrived_is_resent(session: JupyterSession):
    # the socket is dead but the client has not noticed yet: the request is lost on the wire
    session._channel._ws.transport.abort()  # type: ignore[union-attr]
    result = await session.execute("'arrived'", timeout=30)
    assert result.result == "'arrived'"


async def test_kernel_deleted_on_the_server_mid_cell_is_died_not_a_hang(server: RunningServer, session: JupyterSession):
    task = asyncio.ensure_future(session.execute("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=120))
    await asyncio.sleep(1.0)
    start = time.monotonic()
    assert (await asyncio.to_thread(rest, server, "DELETE", f"kernels/{session.kernel_id}")).status_code == 204
    result = await asyncio.wait_for(task, 15)
    assert result.status == "died"
    assert "no longer has this kernel" in result.error.evalue
    assert "started" in result.stream_text()
    assert time.monotonic() - start < 5
    with pytest.raises(KernelDied):
        await session.execute("1")
    assert not await session.is_alive()
    await session.restart()  # a fresh kernel in the same work dir
    assert await session.is_alive()
    assert (await session.execute("import os; os.getcwd()")).result == repr(session.work_dir)


async def test_timeout_interrupts_and_the_kernel_stays_usable(session: JupyterSession):
    assert (await session.execute("y = 7")).ok
    result = await session.execute("import time\ntime.sleep(30)", timeout=1.0)
    assert result.status == "timeout"
    assert (await session.execute("y")).result == "7"


async def test_interrupt_stops_a_running_cell(session: JupyterSession):
    task = asyncio.ensure_future(session.execute("import time\ntime.sleep(30)", timeout=60))
    await asyncio.sleep(1.0)
    await session.interrupt()
    result = await asyncio.wait_for(task, 10)
    assert result.status == "error" and result.error.ename == "KeyboardInterrupt"


async def test_cancelled_execute_interrupts_the_remote_cell(session: JupyterSession):
    task = asyncio.ensure_future(session.execute("import time\ntime.sleep(30)\nz = 1", timeout=60))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await asyncio.wait_for(session.execute("'free again'"), 10)
    assert result.result == "'free again'"


# -- lifecycle ---------------------------------------------------------------------


async def test_shutdown_deletes_the_kernel_and_is_idempotent(server: RunningServer, backend: JupyterBackend):
    session = await backend.start_session()
    assert rest(server, "GET", f"kernels/{session.kernel_id}").status_code == 200
    await session.shutdown()
    await session.shutdown()
    assert rest(server, "GET", f"kernels/{session.kernel_id}").status_code == 404


async def test_cancelled_shutdown_still_deletes_the_kernel(server: RunningServer, backend: JupyterBackend):
    session = await backend.start_session()
    task = asyncio.ensure_future(session.shutdown())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rest(server, "GET", f"kernels/{session.kernel_id}").status_code == 404


async def test_backend_close_shuts_down_open_sessions(server: RunningServer):
    backend = JupyterBackend(url=server.url, token=server.token)
    session = await backend.start_session()
    await backend.aclose()
    assert rest(server, "GET", f"kernels/{session.kernel_id}").status_code == 404


async def test_v1_websocket_protocol_is_spoken(session: JupyterSession):
    # the Nagle-delay fix (TCP_QUICKACK) is measured by bench/remote_kernel.py, not timed here
    assert session._channel.subprotocol == V1_PROTOCOL
    for n in range(3):
        assert (await session.execute(f"{n}+1")).result == str(n + 1)


# -- configuration and errors ----------------------------------------------------


# -- how the servers launch kernels (tests/kernel_gateway/remote_servers.py) ---

PARENT_COMMAND = "import os; open(f'/proc/{os.getppid()}/cmdline', 'rb').read().decode(errors='replace')"


async def test_the_servers_default_kernels_are_forks_of_the_preloaded_template(session: JupyterSession):
    # dsagent's kernel provisioner (the `dsagent-fork` entry point) named in the servers' python3 kernelspec
    parent = (await session.execute(PARENT_COMMAND)).result
    assert "forktemplate.py" in parent, parent
    assert (await session.execute("import sys; 'pandas' in sys.modules")).result == "True"  # kernel_preload


async def test_a_stock_kernelspec_still_launches_a_normal_kernel(server: RunningServer):
    async with JupyterBackend(url=server.url, token=server.token, kernel_name=STOCK_KERNEL) as backend:
        session = await backend.start_session()
        parent = (await session.execute(PARENT_COMMAND)).result
        assert "forktemplate.py" not in parent and "jupyter" in parent, parent
        await session.shutdown()


def test_url_with_token_query_and_describe_masks_the_token():
    address = ServerAddress.parse("http://127.0.0.1:8888/base/?token=s3cret")
    assert (address.url, address.token) == ("http://127.0.0.1:8888/base", "s3cret")
    assert address.ws("kernels/k/channels") == "ws://127.0.0.1:8888/base/api/kernels/k/channels"
    described = JupyterBackend(url="http://127.0.0.1:8888/base/?token=s3cret").describe()
    assert described["url"] == "http://127.0.0.1:8888/base"
    assert "s3cret" not in json.dumps(described)


async def test_no_url_is_backend_unavailable_naming_the_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DSAGENT_JUPYTER_URL", raising=False)
    assert "DSAGENT_JUPYTER_URL" in (JupyterBackend.check() or "")
    with pytest.raises(BackendUnavailable, match="DSAGENT_JUPYTER_URL"):
        await JupyterBackend().start_session()


async def test_unreachable_server_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KernelServerError, match="cannot reach the Jupyter server at " + url) as info:
        await JupyterBackend(url=url).start_session()
    assert "jupyter_url" in info.value.hint


async def test_bad_token_says_so(server: RunningServer):
    with pytest.raises(KernelServerError, match=f"{server.url} refused .*token is wrong") as info:
        await JupyterBackend(url=server.url, token="wrong").start_session()
    assert info.value.status in (401, 403) and "jupyter_token" in info.value.hint
    with pytest.raises(KernelServerError, match="token is missing"):
        await JupyterBackend(url=server.url, token="").start_session()


async def test_unknown_kernelspec_lists_what_the_server_offers(server: RunningServer):
    with pytest.raises(KernelStartFailed, match="no kernelspec named 'nope'; it offers: .*python3") as info:
        await JupyterBackend(url=server.url, token=server.token, kernel_name="nope").start_session()
    assert "jupyter_kernel_name" in info.value.hint


def test_check_and_cli_show_the_backend(server: RunningServer, monkeypatch: pytest.MonkeyPatch, workspace_home: Path):
    env = {**os.environ, "DSAGENT_JUPYTER_URL": server.url, "DSAGENT_JUPYTER_TOKEN": server.token, "DSAGENT_HOME": str(workspace_home)}
    out = subprocess.run([sys.executable, "-m", "dsagent", "backends"], env=env, capture_output=True, text=True, timeout=60, check=False).stdout
    block = out[out.index("jupyter") :]
    assert "usable" in block.splitlines()[0] and "NOT" not in block.splitlines()[0]
    assert f"url: {server.url}" in block and server.token not in out
    env["DSAGENT_JUPYTER_TOKEN"] = "wrong"
    out = subprocess.run([sys.executable, "-m", "dsagent", "backends"], env=env, capture_output=True, text=True, timeout=60, check=False).stdout
    assert "NOT usable" in out[out.index("jupyter") :].splitlines()[0] and "token is wrong" in out


def test_cli_flags_point_exec_at_the_server(server: RunningServer, workspace_home: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAGENT_JUPYTER")}
    env["DSAGENT_HOME"] = str(workspace_home)
    command = [sys.executable, "-m", "dsagent", "--jupyter-url", server.url, "--jupyter-token", server.token]
    done = subprocess.run([*command, "exec", "--backend", "jupyter", "--no-record", "import os; os.getcwd()"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "dsagent-sessions" in done.stdout
    command[-1] = "wrong"
    done = subprocess.run([*command, "exec", "--backend", "jupyter", "--no-record", "1"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "token" in done.stderr
