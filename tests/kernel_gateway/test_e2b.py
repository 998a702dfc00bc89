"""The e2b backend through the real E2B SDK in debug mode, against the loopback server (real kernels behind it)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

pytest_plugins = ["e2b_fixtures"]  # the loopback server fixtures, shared by every e2b test module

from dsagent.errors import (
    BackendUnavailable,
    FileAccessError,
    KernelDied,
    SessionClosed,
)
from dsagent.kernel_gateway.e2b import E2BBackend, SandboxServiceError
from dsagent.kernel_gateway.registry import backend_registry

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


@pytest.fixture
async def backend(e2b_debug):
    async with E2BBackend() as backend:
        yield backend


@pytest.fixture
async def session(backend):
    session = await backend.start_session()
    try:
        yield session
    finally:
        await session.shutdown()


async def test_registered_and_described(monkeypatch):
    assert backend_registry.get("e2b") is E2BBackend
    monkeypatch.setenv("E2B_API_KEY", "e2b_secret_value_123")
    shown = json.dumps(E2BBackend(template="my-tpl", timeout=120).describe())
    assert "my-tpl" in shown and "120s" in shown and '"api_key": "set"' in shown
    assert "e2b_secret_value_123" not in shown


async def test_no_api_key_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    assert "E2B_API_KEY" in (E2BBackend.check() or "")
    with pytest.raises(BackendUnavailable, match="E2B_API_KEY") as info:
        await E2BBackend().start_session()
    assert info.value.reason == "no_api_key" and info.value.hint


async def test_rich_outputs_become_nbformat(session):
    code = (
        "from IPython.display import display, HTML, SVG, JSON, Markdown\n"
        f"display({{'image/png': {PNG!r}, 'text/plain': '<Figure>'}}, raw=True)\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>'))\n"
        "display(HTML('<b>bold</b>'))\n"
        "display(JSON({'a': [1, 2]}))\n"
        "display(Markdown('# title'))\n"
        "display({'e2b/chart': {'type': 'unknown', 'title': 'sales', 'elements': []}, 'text/plain': 'chart'}, raw=True)\n"
        '"it\'s a str"'
    )
    result = await session.execute(code)
    assert result.status == "ok", result.error
    kinds = [o["output_type"] for o in result.outputs]
    assert kinds == ["display_data"] * 6 + ["execute_result"]
    png, svg, html, js, md, chart, main = (o["data"] for o in result.outputs)
    assert png == {"image/png": PNG, "text/plain": "<Figure>"}
    assert svg["image/svg+xml"].startswith("<svg")
    assert html["text/html"] == "<b>bold</b>"
    assert js["application/json"] == {"a": [1, 2]}
    assert md["text/markdown"] == "# title"
    assert chart["application/vnd.e2b.chart+json"] == {"type": "unknown", "title": "sales", "elements": []}
    # the code interpreter strips a str result's quotes; dsagent gets the exact repr back
    assert main == {"text/plain": '"it\'s a str"'}
    assert result.outputs[-1]["execution_count"] == result.execution_count == 1


async def test_streams_reach_the_hook_while_the_cell_runs(session):
    seen: list[tuple[float, dict]] = []
    start = time.monotonic()
    code = "import sys, time\nprint('one', flush=True)\ntime.sleep(1.5)\nprint('err', file=sys.stderr, flush=True)\nprint('two')"
    result = await session.execute(code, on_output=lambda out: seen.append((time.monotonic() - start, out)))
    finished = time.monotonic() - start
    assert result.stream_text() == "one\ntwo\n" and result.stream_text("stderr") == "err\n"
    assert seen[0][1] == {"output_type": "stream", "name": "stdout", "text": "one\n"}
    assert seen[0][0] < finished - 1.0, "the first line must arrive before the cell ends"


async def test_error_output_has_name_value_traceback(session):
    result = await session.execute("def f():\n    raise ValueError('bad value')\nf()")
    assert result.status == "error"
    error = result.outputs[-1]
    assert error["output_type"] == "error" and error["ename"] == "ValueError" and error["evalue"] == "bad value"
    assert any("bad value" in line for line in error["traceback"])
    assert result.error is not None and result.error.ename == "ValueError"


async def test_timeout_interrupts_and_keeps_state(session):
    await session.execute("x = 5")
    start = time.monotonic()
    result = await session.execute("import time\nprint('started', flush=True)\ntime.sleep(30)", timeout=1.5)
    assert result.status == "timeout" and time.monotonic() - start < 5
    assert "started" in result.stream_text()
    assert (await session.execute("x + 1")).result == "6"


async def test_timeout_of_a_cell_that_ignores_interrupts_restarts(session, backend):
    await session.execute("x = 5")
    code = "import time\nwhile True:\n    try:\n        time.sleep(30)\n    except KeyboardInterrupt:\n        pass"
    result = await session.execute(code, timeout=1)
    # the shared execute loop restarts the kernel within the cell, as on every backend, and says so there
    assert result.status == "timeout" and "restarted" in result.error.evalue
    after = await session.execute("'x' in globals()", timeout=60)
    assert after.result == "False"


async def test_interrupt(session):
    task = asyncio.ensure_future(session.execute("import time\ntime.sleep(30)", timeout=60))
    await asyncio.sleep(1.0)
    await session.interrupt()
    result = await asyncio.wait_for(task, 10)
    assert result.status == "error" and result.error.ename == "KeyboardInterrupt"
    assert (await session.execute("1 + 1")).result == "2"


async def test_restart_loses_state_and_resets_count(session):
    await session.execute("y = 1")
    await session.restart()
    result = await session.execute("'y' in globals()")
    assert result.result == "False" and result.execution_count == 1


async def test_env_reaches_kernel_and_commands(backend):
    async with await backend.start_session(env={"DSAGENT_TEST_VAR": "hello"}) as session:
        assert (await session.execute("import os; os.environ['DSAGENT_TEST_VAR']")).result == "'hello'"
        assert (await session.run_command("echo $DSAGENT_TEST_VAR")).stdout == "hello\n"


async def test_files_round_trip_and_listing(session):
    await session.upload("data/in.csv", b"a,b\n1,2\n")
    assert await session.download("data/in.csv") == b"a,b\n1,2\n"
    result = await session.execute("import pandas as pd\npd.read_csv('data/in.csv').to_csv('out.csv', index=False)\nlen(open('out.csv').read())")
    assert result.result == "8", result.outputs
    top = await session.list_files()
    assert [(f.path, f.is_dir) for f in top] == [("data", True), ("out.csv", False)]
    everything = await session.list_files(recursive=True)
    assert [f.path for f in everything] == ["data", "data/in.csv", "out.csv"]
    assert everything[1].size == 8 and everything[1].mtime > 0


async def test_file_errors_are_clear(session):
    with pytest.raises(FileAccessError, match="outside"):
        await session.download("../secret")
    with pytest.raises(FileAccessError, match="no file"):
        await session.download("missing.txt")
    with pytest.raises(FileAccessError, match="not a folder"):
        await session.list_files("nope")


async def test_run_command(session):
    done = await session.run_command("echo out; echo err >&2; pwd")
    assert done.ok and done.stdout == f"out\n{session.work_dir}\n"  # the sandbox's path, as E2B shows it
    assert done.stderr == "err\n"
    failed = await session.run_command("exit 3")
    assert failed.exit_code == 3 and not failed.ok
    start = time.monotonic()
    slow = await session.run_command("echo begin; sleep 30", timeout=1)
    assert slow.timed_out and slow.exit_code is None and time.monotonic() - start < 10
    assert slow.stdout == "begin\n"


async def test_reconnect_gets_kernel_state_back(backend):
    first = await backend.start_session()
    await first.execute("answer = 41")
    await first.upload("kept.txt", b"kept")
    await first.detach()
    second = await backend.start_session(sandbox_id=first.sandbox_id, context_id=first.context_id)
    try:
        assert second.state_restored and second.work_dir == first.work_dir
        assert (await second.execute("answer + 1")).result == "42"
        assert await second.download("kept.txt") == b"kept"
    finally:
        await second.shutdown()
    # the kernel is gone now: a reconnect by work dir starts a new one, files are still there
    third = await backend.start_session(sandbox_id=first.sandbox_id, context_id=first.context_id, work_dir=first.work_dir)
    try:
        assert not third.state_restored and third.work_dir == first.work_dir
        assert (await third.execute("'answer' in globals()")).result == "False"
        assert await third.download("kept.txt") == b"kept"
    finally:
        await third.shutdown()


async def test_sandbox_expiring_mid_cell_is_died_with_a_message(session, e2b_debug):
    task = asyncio.ensure_future(session.execute("import time\nprint('working', flush=True)\ntime.sleep(30)", timeout=60))
    await asyncio.sleep(1.0)
    start = time.monotonic()
    await asyncio.to_thread(e2b_debug.expire)
    result = await asyncio.wait_for(task, 20)
    assert result.status == "died" and time.monotonic() - start < 15
    assert "is gone" in result.error.evalue and session.sandbox_id in result.error.evalue
    assert "working" in result.stream_text()
    with pytest.raises(KernelDied):
        await session.execute("1")
    with pytest.raises(SandboxServiceError, match="gone") as info:
        await session.download("x.txt")
    assert info.value.reason == "expired"
    e2b_debug.revive()  # in debug mode "a new sandbox" is the same server, fresh
    await session.restart()
    assert (await session.execute("1 + 1")).result == "2"


class _ControlPlane(BaseHTTPRequestHandler):
    """E2B's API answering sandbox creation with one fixed error."""

    status: ClassVar[int] = 429
    body: ClassVar[dict[str, object]] = {"code": 429, "message": "Rate limit exceeded"}

    requests: ClassVar[list[tuple[str, dict[str, str], dict[str, object]]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = json.loads(self.rfile.read(length) or b"{}")
        type(self).requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, sent))
        payload = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def control_plane(monkeypatch):
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.setenv("E2B_API_KEY", "e2b_test_key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ControlPlane)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _ControlPlane
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "message", "reason", "words"),
    [
        (429, "Rate limit exceeded", "rate_limit", "rate limit or sandbox quota"),
        (401, "Invalid API key", "auth", "refused the API key"),
    ],
)
async def test_control_plane_refusals(control_plane, monkeypatch, status, message, reason, words):
    url, handler = control_plane
    monkeypatch.setattr(handler, "requests", [])
    monkeypatch.setattr(handler, "status", status)
    monkeypatch.setattr(handler, "body", {"code": status, "message": message})
    backend = E2BBackend(api_params={"api_url": url, "retries": 0})
    with pytest.raises(SandboxServiceError) as info:
        await backend.start_session()
    assert info.value.reason == reason and words in str(info.value) and info.value.hint
    assert "e2b_test_key" not in str(info.value)


async def test_network_failure(monkeypatch):
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.setenv("E2B_API_KEY", "e2b_test_key")
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = E2BBackend(api_params={"api_url": f"http://127.0.0.1:{port}", "retries": 0, "request_timeout": 5})
    start = time.monotonic()
    with pytest.raises(SandboxServiceError) as info:
        await backend.start_session()
    assert info.value.reason == "network", info.value
    assert "check the network" in info.value.hint and time.monotonic() - start < 30


async def test_sandbox_is_kept_alive_while_in_use(e2b_debug):
    async with E2BBackend(timeout=3) as backend:  # extended every second while in use
        session = await backend.start_session()
        extensions: list[int] = []
        real = session._sandbox.set_timeout  # a no-op in debug mode; count the calls

        async def counting(timeout: int, **opts: object) -> None:
            extensions.append(timeout)
            await real(timeout)

        session._sandbox.set_timeout = counting
        try:
            await session.execute("import time; time.sleep(3.5)")
            assert len(extensions) >= 2 and set(extensions) == {3}
            idle = len(extensions)
            await asyncio.sleep(1.5)
            assert len(extensions) == idle, "an idle session must let the sandbox time out"
        finally:
            await session.shutdown()


def test_second_loopback_server_fails_clearly(e2b_server, tmp_path):
    from dsagent.testing.e2b_server import E2BLoopbackServer

    with pytest.raises(RuntimeError, match="49999, 49983 on 127.0.0.1 are in use"):
        E2BLoopbackServer(tmp_path).start()


async def test_shutdown_removes_the_kernel_and_is_idempotent(backend, e2b_debug):
    session = await backend.start_session()
    assert session.context_id in e2b_debug.contexts
    await session.shutdown()
    await session.shutdown()
    assert session.context_id not in e2b_debug.contexts
    with pytest.raises(SessionClosed, match="shut down"):
        await session.execute("1")


def test_check_in_debug_mode_looks_for_the_server(e2b_debug):
    assert E2BBackend.check() is None  # the loopback server answers


async def test_create_sends_template_timeout_metadata_env(control_plane, monkeypatch):
    url, handler = control_plane
    monkeypatch.setattr(handler, "requests", [])
    backend = E2BBackend(template="my-template", timeout=123, metadata={"team": "ds"}, api_params={"api_url": url, "retries": 0})
    with pytest.raises(SandboxServiceError):
        await backend.start_session(work_dir="proj", env={"MODE": "test"})
    path, headers, sent = handler.requests[0]
    assert path.endswith("/sandboxes")  # the create endpoint (v2 in this SDK)
    assert sent["templateID"] == "my-template" and sent["timeout"] == 123
    # the session's env goes to the kernel in dsagent's set-up cell, not to E2B: its server would paste
    # sandbox env vars into every context's first cell between single quotes
    assert "MODE" not in (sent.get("envVars") or {})
    assert sent["metadata"] == {"dsagent": "1", "team": "ds", "dsagent_work_dir": "/home/user/proj"}
    assert headers.get("x-api-key") == "e2b_test_key"  # the key goes to E2B's API only
